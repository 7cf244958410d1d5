#!/usr/bin/env python3
"""A labelled table that is not SST-2, for checking that classification
defaults generalise: who speaks a speech of tinyshakespeare, among its
eight most frequent speakers (or the N most frequent).

  speaker_task.py ../shared/data/tinyshakespeare.txt OUT_DIR [N]

writes OUT_DIR/train.tsv and OUT_DIR/dev.tsv (`sentence<TAB>label`, with a
header line, as SST-2's): every speech (the lines after a "NAME:" line, up
to the next blank line) of those speakers, newlines turned into spaces and
tabs removed; every tenth speech, in file order, goes to dev.
"""

import collections
import os
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    speakers = int(sys.argv[3]) if len(sys.argv) == 4 else 8
    text = open(sys.argv[1], encoding="utf-8").read()
    speeches = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) >= 2 and lines[0].endswith(":"):
            body = " ".join(l.strip() for l in lines[1:]).replace("\t", " ")
            speeches.append((lines[0][:-1], body))
    top = [s for s, _ in collections.Counter(s for s, _ in speeches).most_common(speakers)]
    chosen = [(s, b) for s, b in speeches if s in top]
    os.makedirs(sys.argv[2], exist_ok=True)
    files = {
        name: open(os.path.join(sys.argv[2], f"{name}.tsv"), "w", encoding="utf-8")
        for name in ("train", "dev")
    }
    for f in files.values():
        f.write("sentence\tlabel\n")
    for i, (speaker, body) in enumerate(chosen):
        files["dev" if i % 10 == 9 else "train"].write(f"{body}\t{speaker}\n")
    print(f"{len(chosen)} speeches of {', '.join(top)}; every tenth to dev")


if __name__ == "__main__":
    main()
