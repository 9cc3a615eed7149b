"""`swipr lr-find STUDY.toml [--out DIR]`: fastai's learning-rate range test on the study's data,
image cache and model; its suggestions printed, its plot written, both kept on the study."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from objectives.lr_finder import PLACEHOLDER_LR, versions_used
from objectives.lr_record import (
    add_finding,
    current_version,
    finding_key,
    new_record,
    picture_name,
    recorded_findings,
    stored_finding,
    use_version,
)
from objectives.space import Choices, FinderLR, Range, stage_space
from search.study.data_record import check_fingerprint, prepare_study_data
from search.study.open import open_study, quiet_optuna
from search.studyfile import StudyFile, load_study_file
from search.studyfile.fields import keyed
from search.views.artifacts import artifact_dir, open_artifact_store
from search.views.lr_plot import plot_lr_find
from search.views.progress import Steps
from search.views.range_tests import not_stored, upload_picture
from swipr_core.errors import SwiprError
from swipr_core.train.lr_find import HEAD_LR, NUM_IT, SUGGESTIONS, check_iterations, find_lr
from swipr_core.train.lr_finding import END_LR, START_LR
from swipr_core.train.run import resolve_device
from swipr_core.train.schedule import FREEZE_STRATEGIES, TrainConfig, check_param
from swipr_core.train.threads import cpu_threads

PICTURE = "lr_find.png"


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name, help=help_text,
        description=f"Run fastai's learning-rate range test (Learner.lr_find: the learning rate grows from "
                    f"{START_LR:g} to {END_LR:g} over --num-it batches) on the study's data, image cache and "
                    f"model, and print fastai's suggestions ({', '.join(SUGGESTIONS)}). Writes the loss-vs-lr "
                    f"plot, with the [space] lr range shaded, as {PICTURE} in --out, and keeps the curve and "
                    f"suggestions on the study as a new version of the combination's finding (and the plot "
                    f"as a study artifact), where `swipr dashboard` and `swipr study report` show them. A "
                    f"[space] lr finder search keeps using the version its trials trained with unless --use "
                    f"is given. Batch size, image size and freeze default to the first value of each in "
                    f"[space]. Runs with the CPU threads `swipr study run` gives a trial.")
    p.add_argument("study_file", type=Path, metavar="STUDY.toml", help="the study file")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder to write the plot to (default: <study>.lr_find beside the study file)")
    p.add_argument("--batch-size", type=int, metavar="N", help="batch size (default: [space] batch_size's first)")
    p.add_argument("--image-size", type=int, metavar="PX", help="image size (default: [space] image_size's first)")
    p.add_argument("--freeze", metavar="F",
                   help=f"{', '.join(FREEZE_STRATEGIES)} (default: [space] freeze's first); frozen tests the "
                        f"head alone, frozen_then_unfrozen the unfrozen phase (body at lr/100)")
    p.add_argument("--num-it", type=int, default=NUM_IT, metavar="N", help=f"batches in the test (default {NUM_IT})")
    p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: [train] device)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--use", action="store_true",
                   help="make this test the version later trials of its combination train with, even where "
                        "earlier trials used another (without it, only when no trial used the current one)")
    which.add_argument("--use-version", type=int, metavar="V",
                   help="run no test: make the stored version V of the combination (the flags above choose it) "
                        "the one later trials train with")
    p.set_defaults(func=run)


def first_value(spec: Range | Choices):
    """The value a space starts from: a range's low end, the first of its choices."""
    if isinstance(spec, Range):
        return int(spec.low) if spec.is_int else spec.low
    return spec.values[0]


def lr_range(spec: Range | Choices | FinderLR, suggestions: dict[str, float]) -> tuple[float, float] | None:
    """The (low, high) learning rates the space searches, to shade on the plot: with the finder,
    its suggestion times the factor's range (none if the curve gave no such suggestion)."""
    if isinstance(spec, FinderLR):
        if spec.finder not in suggestions:
            return None
        low, high = lr_range(spec.factor, suggestions) or (0.0, 0.0)
        return low * suggestions[spec.finder], high * suggestions[spec.finder]
    return (spec.low, spec.high) if isinstance(spec, Range) else (min(spec.values), max(spec.values))


def finder_config(study_file: StudyFile, args: argparse.Namespace) -> TrainConfig:
    """The space's first values, with the flags given; each flag checked, naming it."""
    values = {key: first_value(spec) for key, spec in stage_space(study_file.space, 1).items()
              if not isinstance(spec, FinderLR)}   # stage 1's: the range test starts from the starting weights
    values.setdefault("lr", PLACEHOLDER_LR)   # the range test sets its own
    for key in ("batch_size", "image_size", "freeze"):
        flag = getattr(args, key)
        if flag is not None:
            with keyed(f"--{key.replace('_', '-')}:"):
                check_param(key, flag)
            values[key] = flag
    if values["image_size"] > study_file.data.cache_px:
        raise SwiprError(f"image size {values['image_size']} is above {study_file.where('data')} cache_px "
                         f"({study_file.data.cache_px}): the cache has no pixels for it")
    with keyed(study_file.where("space")):
        return TrainConfig(**values, head_epochs=study_file.train.head_epochs, seed=study_file.study.seed)


def output_folder(study_file: StudyFile, out: Path | None) -> Path:
    folder = out if out is not None else study_file.path.parent / f"{study_file.path.stem}.lr_find"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SwiprError(f"--out {folder}: can't make the folder: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise SwiprError(f"--out {folder}: not writable")
    return folder


def run(args: argparse.Namespace) -> int:
    study_file = load_study_file(args.study_file)
    config = finder_config(study_file, args)
    if args.use_version is not None:
        return choose_version(study_file, config, args.use_version)
    with keyed("--num-it:"):
        check_iterations(args.num_it)
    device_name, device_where = study_file.device_from(args.device)
    with keyed(device_where):
        device = resolve_device(device_name)
    out = output_folder(study_file, args.out)
    quiet_optuna()
    print("data: reading the labels and checking the image cache...", flush=True)
    dataset = prepare_study_data(study_file)
    study = open_study(study_file, create=True)
    check_fingerprint(study, dataset, study_file)
    head = f" after {config.head_epochs} head epoch(s) at {HEAD_LR:g}" if config.freeze == "frozen_then_unfrozen" else ""
    print(f"range test: {config.freeze}{head}, batch size {config.batch_size}, {config.image_size} px, "
          f"{args.num_it} batches, lr {START_LR:g} to {END_LR:g}, on {device}", flush=True)
    # a bar over the batches on a terminal; in a pipe a line at each quarter of them
    steps = Steps(args.num_it, "range test", "batches")
    try:
        with keyed(study_file.where("model")):   # the only fields left unchecked: arch, weights
            # the threads a trial of `swipr study run` gets: the same threads, seed and batches, the same curve
            finding = find_lr(dataset, config, study_file.model, device=str(device),
                              precision=study_file.train.precision, compile=study_file.train.compile,
                              num_it=args.num_it, threads=cpu_threads(),
                              on_batch=lambda lr, loss: steps.update(f"lr {lr:.1e}, loss {loss:.4f}"))
    finally:
        steps.close()
    for name in SUGGESTIONS:
        if name in finding.suggestions:
            print(f"{name}: {finding.suggestions[name]:.1e}")
        else:
            print(f"{name}: none ({finding.unreadable.get(name, 'not read')})")
    space_range = lr_range(study_file.space["lr"], finding.suggestions)
    picture = write_picture(finding, out / PICTURE, space_range)
    record = new_record(finding, args.num_it, dataset.fingerprint, space_range, "lr-find")
    version, use_text = store_finding(study, record, args.use)
    stored = store_picture(study, study_file, picture, picture_name(record["key"], version))
    print(f"wrote {picture}; kept on study '{study.study_name}' as range test {record['key']} v{version}{stored}")
    print(use_text)
    return 0


def store_finding(study, record: dict, use: bool) -> tuple[int, str]:
    """Add `record` as a new version of its combination; it becomes the one the search uses
    with `use`, or where no trial trained with the current one. (version, a line saying which
    version the search uses from now on, and why)."""
    key, in_use = record["key"], current_version(study, record["key"])
    used = versions_used(study, key).get(in_use, []) if in_use is not None else []
    if used and not use and in_use is not None:
        use_version(study, key, in_use)   # first: a search running now must not see the new one as the latest
    version = add_finding(study, record, use=use or not used)
    return version, _use_line(key, version, in_use, used, use)


def choose_version(study_file: StudyFile, config: TrainConfig, version: int) -> int:
    """`--use-version V`: the search trains later trials of the combination with its stored version V."""
    quiet_optuna()
    study = open_study(study_file, create=False)
    key = finding_key(config.freeze, config.batch_size, config.image_size, config.head_epochs)
    record, why = stored_finding(study, key, version)
    if record is None:
        known = sorted(r["version"] for r in recorded_findings(study)[0] if r["key"] == key)
        raise SwiprError(f"--use-version {version}: {why} (it has {', '.join(f'v{v}' for v in known) or 'none'})")
    use_version(study, key, version)
    print(f"the search uses v{version} for {key} from now on")
    return 0


def _use_line(key: str, version: int, in_use: int | None, used: list[int], use: bool) -> str:
    trials = f"trial{'s' if len(used) > 1 else ''} {', '.join(map(str, used[:10]))}{', ...' if len(used) > 10 else ''}"
    if used and not use:
        return (f"the search keeps using v{in_use} for {key} ({trials} trained with it); --use-version {version} "
                f"(with the same flags) makes this test the one later trials get")
    if used:
        return f"the search uses v{version} for {key} from now on (v{in_use}, which {trials} trained with, is kept)"
    return f"the search uses v{version} for {key}"


def write_picture(finding, target: Path, space_range: tuple[float, float] | None) -> Path:
    """The plot at `target`, whole or not at all (drawn to a temp file, then renamed)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".lr_find-", suffix=".png")
    os.close(fd)
    try:
        plot_lr_find(finding, Path(tmp), space_range)
        os.chmod(tmp, 0o644)   # mkstemp makes it private; a plot is for sharing
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def store_picture(study, study_file: StudyFile, picture: Path, name: str) -> str:
    """Upload the plot as a study artifact (the dashboard shows those); a failure is a warning:
    the plot is written and the curve is on the study already."""
    try:
        store = open_artifact_store(artifact_dir(study_file))
    except Exception as error:  # noqa: BLE001 - see the docstring
        return not_stored(error)
    return upload_picture(study, store, picture, name)
