"""Write one CSV per site from the bundled Rotten Tomatoes sentences, as separate sites would
hold them: different sizes and different label mixes (the worked example of "Deploying on real
sites" in the README).

    python scripts/make_sites.py                 # sites/site_0.csv ... site_3.csv
    python scripts/make_sites.py --out elsewhere

Columns ``text`` and ``label`` (negative / positive). Each sentence goes to one site only.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from declora.learning.sources import read_table

SIZES = (1600, 700, 1100, 400)  # sentences at each site
POSITIVE = (0.85, 0.50, 0.20, 0.65)  # share of positive reviews at each site
NAMES = {"0": "negative", "1": "positive"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sites", help="folder for site_<i>.csv (default sites)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, _ = read_table("bundled:rotten_tomatoes")
    random.Random(args.seed).shuffle(rows)
    by_label = {
        name: [r for r in rows if NAMES[str(r["label"])] == name] for name in NAMES.values()
    }
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (n, share) in enumerate(zip(SIZES, POSITIVE)):
        k = round(n * share)
        site = [("positive", r) for r in by_label["positive"][:k]]
        site += [("negative", r) for r in by_label["negative"][: n - k]]
        by_label["positive"] = by_label["positive"][k:]
        by_label["negative"] = by_label["negative"][n - k :]
        random.Random(args.seed + i).shuffle(site)
        path = folder / f"site_{i}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((r["text"], label) for label, r in site)
        print(f"{path}: {n} sentences, {share:.0%} positive")


if __name__ == "__main__":
    main()
