"""`swipr predict BUNDLE IMAGE_OR_DIR...`: YES or NO and P(YES) for each image, on the CPU.

Exit status: 0 when every image got an answer, 1 when some could not be read (their rows
say why), 2 when the bundle is refused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from swipr_core.serve.predict import Predictor, as_dict, expand_inputs


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description="Verify a model bundle (manifest and every file's SHA-256), then answer YES or NO "
                    "with P(YES) for each image, batched on the CPU with onnxruntime. Folders are "
                    "walked (symlinked folders too) and every file not hidden is tried: the decoder, "
                    "not the name, decides what is an image. A missing, broken or non-image file "
                    "gets a row with its error.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="a bundle folder written by `swipr fit`")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument("--json", action="store_true", help="print one JSON object with a row per image")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--tta", action="store_true",
                   help="average P(YES) over each image and its mirror (a bundle fit with --tta always does)")
    p.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse the bundle unless manifest.json's SHA-256 is HEX (pin the bundle you trust)")
    p.set_defaults(func=run)


def printable(text: str) -> str:
    """The text with control and other unprintable characters escaped as Python writes them
    (\\n, \\r, \\x1b, \\udcff): a file name with a newline would otherwise print a row of its
    own, an ANSI escape would move the cursor, and undecodable bytes would fail the print."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def run(args: argparse.Namespace) -> int:
    predictor = Predictor(args.bundle, threads=args.threads, expect_sha256=args.expect_sha256,
                          tta_flip=args.tta)
    images = expand_inputs(args.images)
    failed = 0
    rows = []
    for row in predictor.predict(images, batch_size=args.batch_size):
        failed += row.error is not None
        if args.json:
            rows.append(as_dict(row))
        elif row.error is None:
            print(f"{row.answer:<5} {row.p_yes:.4f}  {printable(row.image)}", flush=True)
        else:
            print(f"ERROR -       {printable(row.image)}  ({printable(row.error)})", flush=True)
    if args.json:
        manifest = predictor.manifest
        print(json.dumps({"bundle": str(args.bundle), "manifest_sha256": predictor.manifest_sha256,
                          "study": manifest.get("study"), "trial": manifest.get("trial"),
                          "threshold": predictor.threshold, "tta": predictor.tta,
                          "predictions": rows}, indent=2))
    return 1 if failed else 0
