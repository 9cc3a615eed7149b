"""`swipr labels STUDY.toml`: (re)make the labels file with its fixed validation split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from search.studyfile import load_study_file
from search.studyfile.fields import keyed
from swipr_core.data.labels import describe_odd_ages
from swipr_core.data.split import prepare_labels
from swipr_core.data.writable import check_folder_writable


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description="Apply the study file's [data.rules] to the pics database, drop rows whose "
                    "image is missing or broken, split off a fixed validation set and write the "
                    "labels file (CSV) with its .meta.json, which records the database it was made from "
                    "(path, size, SHA-256): a study whose [data] database then names other data is refused "
                    "until the labels file is remade here. An existing labels file is remade; any "
                    "other existing file is refused unless --force.",
    )
    p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="labels file to write (default: [data] labels_file of the study file)")
    p.add_argument("--force", action="store_true",
                   help="overwrite FILE even if it is not a labels file swipr wrote")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    study_file = load_study_file(args.study_file)
    data = study_file.data
    labels_file = args.output or data.labels_file
    # Before every image is read and hashed, not after.
    check_folder_writable(labels_file.parent, f"-o {labels_file}" if args.output else
                          f"{study_file.where('data')} labels_file {labels_file}")
    # Always rebuild: this command is how a user asks for a new labels file.
    with keyed(study_file.where("data")):
        split = prepare_labels(data.database, data.image_root, data.rules, data.valid_pct,
                               data.split_seed, labels_file, rebuild=True, force=args.force,
                               cache_px=data.cache_px)
    counts, excluded, same = split.counts(), split.meta["excluded"], split.meta["same_content"]
    odd_ages = split.meta["odd_ages"]
    if args.json:
        print(json.dumps({"labels_file": str(labels_file), "fingerprint": split.fingerprint,
                          "counts": counts, "excluded": excluded, "same_content": same,
                          "odd_ages": odd_ages, "database": split.meta.get("database")}, indent=2))
        return 0
    reasons = ", ".join(f"{reason} {count}" for reason, count in excluded.items())
    print(f"wrote {labels_file} (fingerprint {split.fingerprint})")
    print(f"{len(split)} rows: YES {counts['YES']}, NO {counts['NO']}, valid {counts['valid']}; "
          f"excluded {sum(excluded.values())} ({reasons})")
    print(f"identical photos under different paths: {same['rows']} rows in {same['groups']} groups, "
          "each group kept on one side of the split")
    if odd_ages["rows"]:
        print(describe_odd_ages(odd_ages))
    return 0
