#!/usr/bin/env python3
"""A small labelled table cut from a large one, for checking that the
classification defaults work when the data are few (the regime where a
linear baseline is hardest to beat):

  sample_table.py TABLE N SEED OUT

writes to OUT the header line of TABLE (a TSV) and N of its data rows,
drawn without replacement by Python's random.Random(SEED), in the drawn
order. The README's "SST-2, 1,000 examples" rows are
`sample_table.py ../shared/data/sst2/train.tsv 1000 0 OUT`, with SST-2's
own dev table as the dev set.
"""

import random
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    path, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    header, rows = lines[0], [l for l in lines[1:] if l]
    if n > len(rows):
        sys.exit(f"{path}: {len(rows)} data rows, fewer than the {n} asked for")
    random.Random(seed).shuffle(rows)
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(header + "\n" + "\n".join(rows[:n]) + "\n")


if __name__ == "__main__":
    main()
