"""Write a sentence-pair task built from the bundled Rotten Tomatoes sentences: do two reviews
agree? (the worked example of "Train on your own data" in the docs).

    python scripts/make_pairs.py                       # pairs.parquet, 4,000 pairs
    python scripts/make_pairs.py --out pairs.csv       # the same pairs as CSV

Columns ``text`` and ``text_pair`` (two different sentences) and ``label`` (``same`` when both
are positive or both negative, ``different`` otherwise; half of each). Like MRPC or QQP, the
label is a property of the pair, not of either sentence: run it with
``data.text_pair_column=text_pair``.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from declora.learning.sources import read_table


def pairs(n: int, seed: int) -> list[dict]:
    """``n`` pairs of distinct sentences, half with the same polarity."""
    rows, _ = read_table("bundled:rotten_tomatoes")
    rng = random.Random(seed)
    rng.shuffle(rows)
    by_label = {"0": [], "1": []}
    for r in rows:
        by_label[str(r["label"])].append(r["text"])
    out = []
    for k in range(n):
        same = k % 2 == 0
        first = "01"[(k // 2) % 2]  # each polarity opens as many pairs of each kind
        second = first if same else "10"[int(first)]
        a, b = by_label[first].pop(), by_label[second].pop()
        out.append({"text": a, "text_pair": b, "label": "same" if same else "different"})
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pairs.parquet", help=".parquet (default) or .csv")
    parser.add_argument("--pairs", type=int, default=4000, help="pairs to write (at most 4,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 2 <= args.pairs <= 4000:  # each sentence is used once: 8,530 sentences
        parser.error("--pairs: between 2 and 4,000")
    rows = pairs(args.pairs, args.seed)
    out = Path(args.out)
    if out.suffix == ".csv":
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"{out}: {len(rows)} pairs of Rotten Tomatoes sentences, half with the same polarity")


if __name__ == "__main__":
    main()
