"""`swipr dashboard STUDY.toml [--host H] [--port P]`: see the study in a browser."""
from __future__ import annotations

import argparse
from pathlib import Path

from search.study.open import quiet_optuna
from search.studyfile import load_study_file
from search.views.artifacts import check_artifact_dir
from search.views.dashboard import serve


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description="Serve optuna-dashboard on the study's storage, with every trial's pictures "
                    "(loss and accuracy curves, learning-rate schedule, confusion matrix, ROC curve) "
                    "and notes. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 lets other machines in)")
    p.add_argument("--port", type=int, default=8080, metavar="P", help="port (default: 8080; 0 = any free port)")
    p.add_argument("--artifact-dir", type=Path, metavar="DIR",
                   help="the study's pictures (default: $SWIPR_ARTIFACT_DIR, else <study>.artifacts beside the study file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_optuna()
    study_file = load_study_file(args.study_file)
    check_artifact_dir(args.artifact_dir)
    return serve(study_file, args.host, args.port, args.artifact_dir)
