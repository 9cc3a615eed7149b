"""`swipr fit STUDY.toml --out DIR`: replay the best (or a chosen) trial and write its model bundle."""
from __future__ import annotations

import argparse
from pathlib import Path

from search.fit.replay import fit


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description="Replay a COMPLETE trial exactly (its params, seed, split and epochs), check that its "
                    "final validation loss matches the trial's, pick the decision threshold on the "
                    "validation split, and write a model bundle (safetensors weights, an ONNX model for "
                    "CPU servers, manifest.json with every file's SHA-256). The study records the bundle "
                    "and its manifest's SHA-256 for the trial (a study user attr and a study artifact: "
                    "Optuna lets nothing write to a finished trial). DIR may be absent, empty, or a previous bundle "
                    "(replaced); a bundle folder holding files its manifest doesn't list is refused unless --force.",
    )
    p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the bundle to")
    p.add_argument("--trial", type=int, metavar="N", help="trial number to replay (default: the best trial)")
    p.add_argument("--target-precision", type=float, metavar="P",
                   help="pick the threshold with at least this precision for YES on validation "
                        "(default: the threshold with the best F1)")
    p.add_argument("--device", help="override [train] device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads for the replay (default: the trial's user attr cpu_threads, else "
                        "all cores); a CPU replay is bit-identical only with the trial's thread count")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: the bundle's model averages P(YES) over each image and its "
                        "mirror (the fit prints val_loss with and without it either way)")
    p.add_argument("--strict", action="store_true",
                   help="write no bundle when the replay's loss is outside the tolerance")
    p.add_argument("--force", action="store_true",
                   help="replace DIR even when it holds files the old bundle's manifest doesn't list "
                        "(they are deleted with it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fit(args.study_file, args.out, trial_number=args.trial, target_precision=args.target_precision,
        device=args.device, strict=args.strict, threads=args.threads, echo=lambda line: print(line, flush=True),
        tta=args.tta, force=args.force)
    return 0
