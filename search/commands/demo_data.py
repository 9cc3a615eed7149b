"""`swipr demo-data DIR`: write a small Swipr-shaped dataset to try the pipeline on."""
from __future__ import annotations

import argparse
from pathlib import Path

from swipr_core.data.demo import DEMO_RULES, row_count, write_demo_data
from swipr_core.data.labels import build_labels
from swipr_core.data.writable import check_folder_writable


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description="Write DIR/pics.db and JPEG images in insta/ok, insta/no, Tinder/yes, "
                    "Tinder/no and misc/, with metadata that exercises every label rule. "
                    "Refuses a non-empty DIR unless it holds an earlier demo dataset.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="where to write the dataset")
    p.add_argument("--images", type=int, default=600, metavar="N",
                   help="pictures, one row each in the pics table, which gets 4 rows more: the mistakes "
                        "a real table holds (default: 600)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed; the same seed writes the same dataset (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_folder_writable(args.directory, f"DIR {args.directory}")
    database = write_demo_data(args.directory, n_images=args.images, seed=args.seed)
    table = build_labels(database, database.parent, DEMO_RULES)
    excluded = ", ".join(f"{reason} {count}" for reason, count in table.excluded.items())
    print(f"wrote {database} and its images under {database.parent}")
    # The table's own count, mistakes included: the numbers after it add up to it.
    print(f"{row_count(database)} rows: YES {table.labels.count('YES')}, "
          f"NO {table.labels.count('NO')}, excluded {sum(table.excluded.values())} ({excluded})")
    return 0
