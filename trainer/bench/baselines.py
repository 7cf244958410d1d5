#!/usr/bin/env python3
"""The classical baselines every kilobyte figure stands beside, on the same
data and machine:

  baselines.py classify --train T --dev D [--text-column C] [--label-column L]
      TF-IDF over character 1-5-grams + logistic regression (scikit-learn):
      dev accuracy and wall time. Tables are TSV (CSV by extension) with a
      header line, columns chosen by name or 0-based index, as
      `kilobyte train --objective classify` reads them.

  baselines.py compress FILE [--val-fraction 0.1]
      Bits per byte of the last fraction of FILE for bzip2 -9, xz -9e,
      zstd -19 and PPMd order 6 (7-Zip), each measured as the extra
      compressed size of the whole file over its first part: what the
      compressor spends on the validation bytes once it has seen the
      training bytes. Compressors that are not installed are skipped.

Needs scikit-learn for `classify` (pip install scikit-learn).
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time


def read_table(path, text_col, label_col):
    delimiter = "," if path.endswith(".csv") else "\t"
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE))
    if not rows:
        sys.exit(f"{path}: empty table")
    header, body = rows[0], rows[1:]

    def index(col):
        if col in header:
            return header.index(col)
        if col.isdigit() and int(col) < len(header):
            return int(col)
        sys.exit(f"{path}: no column {col!r} in the header {header}")

    t, l = index(text_col), index(label_col)
    texts, labels = [], []
    for n, row in enumerate(body, start=2):
        if len(row) <= max(t, l):
            sys.exit(f"{path}:{n}: {len(row)} fields, expected at least {max(t, l) + 1}")
        texts.append(row[t])
        labels.append(row[l])
    return texts, labels


def classify(args):
    try:
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        sys.exit("classify needs scikit-learn: pip install scikit-learn")
    start = time.time()
    xt, yt = read_table(args.train, args.text_column, args.label_column)
    xd, yd = read_table(args.dev, args.text_column, args.label_column)
    vec = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 5), n_features=2**18, alternate_sign=False)
    tfidf = TfidfTransformer(sublinear_tf=True)
    train = tfidf.fit_transform(vec.transform(xt))
    model = LogisticRegression(C=10, max_iter=1000).fit(train, yt)
    acc = (model.predict(tfidf.transform(vec.transform(xd))) == yd).mean()
    print(
        f"char 1-5-gram TF-IDF + logistic regression: dev accuracy {100 * acc:.2f}% "
        f"({len(xt)} train, {len(xd)} dev rows, {time.time() - start:.1f} s)"
    )


COMPRESSORS = [
    ("bzip2 -9", "bzip2", lambda src, dst: ["bzip2", "-9", "-c", src], True),
    ("xz -9e", "xz", lambda src, dst: ["xz", "-9e", "-c", src], True),
    ("zstd -19", "zstd", lambda src, dst: ["zstd", "-19", "-q", "-c", src], True),
    ("PPMd order 6 (7-Zip)", "7z", lambda src, dst: ["7z", "a", "-bd", "-bso0", "-m0=PPMd:o=6:mem=256m", dst, src], False),
]


def compressed_size(cmd, to_stdout, src, work):
    if to_stdout:
        return len(subprocess.run(cmd(src, None), check=True, stdout=subprocess.PIPE).stdout)
    dst = os.path.join(work, "out.7z")
    if os.path.exists(dst):
        os.remove(dst)
    subprocess.run(cmd(src, dst), check=True, stdout=subprocess.DEVNULL)
    return os.path.getsize(dst)


def compress(args):
    data = open(args.file, "rb").read()
    split = len(data) - int(len(data) * args.val_fraction)
    held = len(data) - split
    if held <= 0:
        sys.exit(f"{args.file}: --val-fraction {args.val_fraction} leaves no validation bytes")
    with tempfile.TemporaryDirectory() as work:
        whole, head = os.path.join(work, "whole"), os.path.join(work, "head")
        open(whole, "wb").write(data)
        open(head, "wb").write(data[:split])
        print(f"{args.file}: last {held} of {len(data)} bytes, bits per byte given the first {split}")
        for name, tool, cmd, to_stdout in COMPRESSORS:
            if shutil.which(tool) is None:
                print(f"  {name}: not installed")
                continue
            extra = compressed_size(cmd, to_stdout, whole, work) - compressed_size(cmd, to_stdout, head, work)
            print(f"  {name}: {8 * extra / held:.3f} bpb")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classify")
    c.add_argument("--train", required=True)
    c.add_argument("--dev", required=True)
    c.add_argument("--text-column", default="sentence")
    c.add_argument("--label-column", default="label")
    z = sub.add_parser("compress")
    z.add_argument("file")
    z.add_argument("--val-fraction", type=float, default=0.1)
    args = p.parse_args()
    classify(args) if args.cmd == "classify" else compress(args)


if __name__ == "__main__":
    main()
