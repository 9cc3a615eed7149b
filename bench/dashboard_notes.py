"""Trial notes against the size of a study: optuna-dashboard's study page and the note's own cost.

    .venv/bin/python bench/dashboard_notes.py                  # 40 and 2,000 trials, every way
    .venv/bin/python bench/dashboard_notes.py --sizes 40 400 2000 --repeat 5

For each size N, a SQLite study (a temp folder) gets N synthetic finished trials shaped like
swipr's (7 params, its user attrs, 3 reported epochs), each with a note stored one of three ways:

- `dashboard_note`: optuna-dashboard's `save_note`: two study system attrs per trial, and
  save_note reads all of them on every call;
- `trial_artifact`: a `note.md` artifact and a one-line user attr, the trial's own rows (the
  dashboard's Note panel empty);
- `note_panel`: search.views.artifacts.store_trial_note, the way swipr stores notes: the note in
  the dashboard's own study system attrs, written key by key, and the one-line user attr.

Then, on a study of N trials, it times storing the note of a new trial (median of --repeat
new trials, wall seconds) and the dashboard's study page (`GET /api/studies/<id>`, the request
the page makes, through a fresh app each time so no cache helps: process CPU seconds and bytes,
median of --repeat). The page is plain optuna-dashboard's for the first two ways, and for
`note_panel` both `swipr dashboard`'s (search.views.dashboard.dashboard_app, "swipr page") and
plain optuna-dashboard's ("plain page"); the two must answer the same bytes, and the swipr page
must carry every trial's note. The last lines give each cost at the largest N as a multiple of
its cost at the smallest N: the target is 2x or less for the note and for the page's cost per
trial (a page that lists every trial grows with their number at best: linear is the floor).
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import optuna_dashboard  # noqa: E402
from optuna.artifacts import upload_artifact  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402
from optuna_dashboard import save_note  # noqa: E402

from objectives.optuna_compat import add_study_system_attrs, storage_of, study_id, trial_id  # noqa: E402
from search.views.artifacts import (  # noqa: E402
    NOTE_ATTR,
    NOTE_STATE_ATTR,
    note_line,
    open_artifact_store,
    store_trial_note,
    trial_note,
)
from search.views.dashboard import dashboard_app  # noqa: E402
from search.views.dashboard_compat import dashboard_note_attrs, plain_study_page, replace_study_page  # noqa: E402

# (way, page): the note stored that way, the page of that dashboard
ROWS = (("dashboard_note", "plain"), ("trial_artifact", "plain"), ("note_panel", "swipr"), ("note_panel", "plain"))
WAYS = ("dashboard_note", "trial_artifact", "note_panel")
DISTRIBUTIONS = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "batch_size": CategoricalDistribution([16, 24, 32]),
                 "image_size": CategoricalDistribution([224, 229]),
                 "freeze": CategoricalDistribution(["frozen", "unfrozen", "frozen_then_unfrozen"]),
                 "n_cycles": CategoricalDistribution([1, 2, 3]), "cycle_len": CategoricalDistribution([1, 2]),
                 "cycle_mult": CategoricalDistribution([1, 2])}


def _params(number: int) -> dict:
    return {name: (1e-4 * (1 + number % 7) if name == "lr" else dist.choices[number % len(dist.choices)])
            for name, dist in DISTRIBUTIONS.items()}


def _metrics(number: int) -> dict:
    return {"val_loss": 0.4 + (number % 13) / 100, "val_accuracy": 0.8 + (number % 5) / 100,
            "val_roc_auc": 0.7, "majority_accuracy": 0.806, "epochs": 3, "train_seconds": 240.0}


def _note(number: int) -> str:
    return trial_note(number, "COMPLETE", _params(number), _metrics(number), 0.806)


def _trial(number: int, way: str, artifact: str) -> optuna.trial.FrozenTrial:
    metrics = _metrics(number)
    attrs = {k: v for k, v in metrics.items() if k != "val_loss"}
    attrs.update(seed=number, planned_epochs=3, prune_at="cycle_end", data_fingerprint="0123456789abcdef",
                 cpu_threads=1, epoch_losses=[0.6, 0.5, metrics["val_loss"]], judged_epochs=[0, 1, 2])
    system: dict[str, object] = {}
    if way != "dashboard_note":   # the line, beside the note
        attrs[NOTE_ATTR] = note_line("COMPLETE", metrics, 0.806)
    if way == "trial_artifact":   # upload_artifact's meta
        system[f"artifacts:{artifact}"] = (f'{{"artifact_id": "{artifact}", "filename": "note.md", '
                                           f'"mimetype": "text/markdown", "encoding": null}}')
    if way == "note_panel":   # store_trial_note's own record of the note
        system[NOTE_STATE_ATTR] = {"version": 1, "chunks": 1}
    return create_trial(state=TrialState.COMPLETE, value=metrics["val_loss"], params=_params(number),
                        distributions=DISTRIBUTIONS, user_attrs=attrs, system_attrs=system,
                        intermediate_values={0: 0.6, 1: 0.5, 2: metrics["val_loss"]})


def build_study(folder: Path, n_trials: int, way: str) -> tuple[optuna.Study, object]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / f'{way}-{n_trials}.db'}")
    # a random sampler: TPE over 2,000 trials would time the sampler in every ask, not the note
    study = optuna.create_study(study_name="bench", storage=storage, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.add_trials([_trial(i, way, f"bench-{i}") for i in range(n_trials)])
    if way != "trial_artifact":
        # What save_note (or store_trial_note, the same keys) leaves per trial, in one transaction:
        # N save_notes would take O(N^2) here, and that cost is what time_note measures on the new trials.
        add_study_system_attrs(study, {key: value for trial in study.get_trials(deepcopy=False)
                                       for key, value in dashboard_note_attrs(trial_id(trial), _note(trial.number), 1).items()})
    return study, open_artifact_store(folder / f"{way}-{n_trials}.artifacts")


def _store_artifact_note(trial, store, note: str, line: str) -> None:
    """The trial_artifact way: the note as a `note.md` artifact, its line as a user attr."""
    trial.set_user_attr(NOTE_ATTR, line)
    with tempfile.TemporaryDirectory(prefix="swipr-note-") as tmp:
        path = Path(tmp) / "note.md"
        path.write_text(note, encoding="utf-8")
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="text/markdown")


def time_note(study: optuna.Study, store, way: str, repeat: int) -> float:
    """Median wall seconds to store one new trial's note, on a study of its size."""
    seconds = []
    for _ in range(repeat):
        trial = study.ask(DISTRIBUTIONS)
        note = _note(trial.number)
        started = time.perf_counter()
        if way == "dashboard_note":
            save_note(trial, note)
        elif way == "trial_artifact":
            _store_artifact_note(trial, store, note, note_line("COMPLETE", _metrics(trial.number), 0.806))
        else:
            store_trial_note(trial, store, note, note_line("COMPLETE", _metrics(trial.number), 0.806))
        seconds.append(time.perf_counter() - started)
        study.tell(trial, _metrics(trial.number)["val_loss"])
    return statistics.median(seconds)


def _app(storage, store, page: str):
    """A fresh app: plain optuna-dashboard's, or `swipr dashboard`'s (its study page made linear)."""
    replace_study_page(plain_study_page())
    if page == "swipr":
        return dashboard_app(storage, store)
    return optuna_dashboard.wsgi(storage, artifact_store=store)


def time_page(study: optuna.Study, store, repeat: int, page: str) -> tuple[float, bytes]:
    """(median process CPU seconds, body) of the study page's request, a fresh app each time."""
    cpu, body, status = [], b"", []

    def start_response(code, headers, *rest):
        status.append(code)

    for _ in range(repeat):
        app = _app(storage_of(study), store, page)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/api/studies/{study_id(study)}",
                   "QUERY_STRING": "after=0", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0",
                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
        status.clear()
        started = time.process_time()
        body = b"".join(app(environ, start_response))
        cpu.append(time.process_time() - started)
        if not status or not status[0].startswith("200"):
            raise SystemExit(f"the study page answered {status}")
    return statistics.median(cpu), body


def notes_shown(body: bytes) -> int:
    """How many trials of a study page carry their note in the Note panel's field."""
    return sum(trial["note"]["body"] == _note(trial["number"]) for trial in json.loads(body)["trials"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 2000], metavar="N")
    parser.add_argument("--repeat", type=int, default=3, metavar="K", help="new trials / page loads to time (median)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="swipr-bench-notes-") as tmp:
        for way in WAYS:
            for n in args.sizes:
                study, store = build_study(Path(tmp), n, way)
                note_s = time_note(study, store, way, args.repeat)
                bodies = {}
                for page in [page for row_way, page in ROWS if row_way == way]:
                    page_cpu, bodies[page] = time_page(study, store, args.repeat, page)
                    results[way, page, n] = (note_s, page_cpu)
                    print(f"{way:<15} {page:<5} page, trials {n:>5}: note {1000 * note_s:7.1f} ms   study page "
                          f"{page_cpu:7.3f} CPU-s ({1000 * page_cpu / n:.2f} ms a trial), "
                          f"{len(bodies[page]) / 1e6:5.2f} MB, notes shown {notes_shown(bodies[page])}/{n + args.repeat}",
                          flush=True)
                if len(set(bodies.values())) > 1:
                    raise SystemExit(f"{way}, {n} trials: swipr's study page differs from plain optuna-dashboard's")
    small, large = min(args.sizes), max(args.sizes)
    for way, page in ROWS:
        (note_small, page_small), (note_large, page_large) = results[way, page, small], results[way, page, large]
        per_trial = (page_large / large) / (page_small / small)
        print(f"{way} ({page} page): at {large} trials, note x{note_large / note_small:.1f}, study page per trial "
              f"x{per_trial:.1f} its {small}-trial cost (the whole page x{page_large / page_small:.0f}: "
              f"it lists {large // small}x the trials)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
