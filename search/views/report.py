"""`swipr study report`: one self-contained HTML page about a study.

Optuna's own plotly figures (history, intermediate values with pruned trials, parameter
importances, parallel coordinates), every trial's raw validation loss per epoch with the
epochs where the pruner judged it, with plotly.js inlined once, and the best trial's
pictures from its artifacts as data URIs: the page opens from a file, offline, anywhere.
A plot Optuna can't draw yet (importances need two finished trials that differ) becomes
a sentence saying why, not a failed report.
"""
from __future__ import annotations

import base64
import datetime
import html
import os
import tempfile
import warnings
from pathlib import Path

import optuna.visualization as vis
import plotly.graph_objects as go
from optuna.trial import TrialState

from objectives.judging import JUDGED_ATTR, LOSSES_ATTR, interrupted
from objectives.lr_record import finding_of, recorded_findings
from objectives.optuna_compat import storage_of
from objectives.record import record_of
from objectives.trial_attrs import attrs_of
from search.study.data_record import data_summary
from search.study.open import best_or_none, open_study, quiet_optuna
from search.studyfile.url_text import redact
from search.studyfile import load_study_file
from search.views.artifacts import PICTURES, check_artifact_dir, open_artifact_store, trial_pictures
from search.views.artifacts import artifact_dir as default_artifact_dir
from search.views.gains import gains_rows, search_gains
from search.views.lr_plot import finding_title, plot_lr_find
from search.views.results import last_epoch_loss, result_metrics, schedule_text
from swipr_core.errors import SwiprError

REPORT_FILE = "report.html"



def plot_raw_losses(study) -> go.Figure:
    """Every trial's validation loss at every epoch it ran; diamonds where the pruner judged it."""
    figure = go.Figure()
    for trial in study.get_trials(deepcopy=False):
        losses = attrs_of(trial).get(LOSSES_ATTR)
        if not losses:
            continue
        pruned = trial.state == TrialState.PRUNED
        name = f"Trial{trial.number}" + (" (pruned)" if pruned else "")
        figure.add_trace(go.Scatter(x=list(range(len(losses))), y=losses, mode="lines", name=name,
                                    legendgroup=name, line={"dash": "dot" if pruned else "solid"}))
        judged = [e for e in attrs_of(trial).get(JUDGED_ATTR, []) if e < len(losses)]
        figure.add_trace(go.Scatter(x=judged, y=[losses[e] for e in judged], mode="markers", name=f"{name} judged",
                                    legendgroup=name, showlegend=False, marker={"symbol": "diamond", "size": 8}))
    if not figure.data:
        raise ValueError("no trial has recorded its per-epoch losses yet")
    figure.update_layout(xaxis_title="epoch", yaxis_title="validation loss", showlegend=True)
    return figure


# (anchor, title, function of the study -> plotly figure)
PLOTS = (
    ("history", "Optimisation history", vis.plot_optimization_history),
    ("raw", "Validation loss per epoch, as it ran (diamonds: where the pruner judged)", plot_raw_losses),
    ("intermediate", "What the pruner judged: the reported values (pruned trials dotted)",
     vis.plot_intermediate_values),
    ("importances", "Parameter importances", vis.plot_param_importances),
    ("parallel", "Parallel coordinates", vis.plot_parallel_coordinate),
)
CURVE_TITLES = {
    "curves.png": "Loss and accuracy per epoch",
    "lr_schedule.png": "Learning-rate schedule",
    "confusion_matrix.png": "Confusion matrix of the value's model (its best finished schedule)",
    "roc_curve.png": "ROC curve of the value's model",
    "top_losses.png": "Top losses of the value's model: the validation images it is most confidently wrong about",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #eee; }
.missing { color: #a33; } .pictures img { max-width: 100%; margin: 0.5em 0; display: block; }
.meta { color: #666; }
"""


def _plot_sections(study) -> list[str]:
    sections, plotly_included = [], False
    for anchor, title, draw in PLOTS:
        body = ""
        kwargs = {}
        try:
            if anchor == "importances":
                kwargs["params"] = importance_params(study)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "experimental" notices: not for the reader
                figure = draw(study, **kwargs)
            if anchor == "intermediate":
                _mark_pruned(figure, study)
            body = figure.to_html(full_html=False, include_plotlyjs="inline" if not plotly_included else False,
                                  div_id=f"plot-{anchor}")
            if anchor == "importances" and left_out_of_importances(study):
                body += f'<p class="meta">{html.escape(left_out_of_importances(study))}</p>'
            plotly_included = True
        except Exception as error:  # noqa: BLE001 - one plot that can't be drawn yet must not sink the page
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            body = f'<p class="missing">No plot yet: {html.escape(reason)}</p>'
        sections.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>')
    return sections


def importance_params(study) -> list[str]:
    """The params worth an importance: ones every finished trial drew that took two values or more.

    Optuna draws something even from one trial (an even split) or from a param held fixed;
    a made-up bar chart is worse than a sentence saying why there is none. Stage 2's params are
    drawn only by trials that reach stage 2 (objectives.space.conditional): ranked with the rest,
    they would restrict every importance to those trials, so they are left out (`left_out_of_importances` says so).
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        raise ValueError(f"parameter importances need 2 or more finished trials, and this study has {len(done)}")
    if len({t.value for t in done}) < 2:
        raise ValueError("every finished trial has the same value, so no parameter made a difference")
    everywhere = set.intersection(*(set(t.params) for t in done))
    varied = [name for name in done[0].params
              if name in everywhere and len({repr(t.params.get(name)) for t in done}) > 1]
    if not varied:
        raise ValueError("every finished trial ran with the same params")
    return varied


def left_out_of_importances(study) -> str:
    """The sentence under the importances about params only some finished trials drew."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return ""
    everywhere = set.intersection(*(set(t.params) for t in done))
    some = sorted({name for t in done for name in t.params} - everywhere)
    if not some:
        return ""
    counts = ", ".join(f"{name} ({sum(name in t.params for t in done)} of {len(done)})" for name in some)
    return (f"Left out: {counts} finished trials drew them. Stage 2's params are drawn only by trials that "
            f"reach stage 2, so they are ranked among those trials alone, not against stage 1's.")


def _mark_pruned(figure, study) -> None:
    """Pruned trials' lines dotted and named, so where the pruner cut in shows at a glance."""
    pruned = {f"Trial{t.number}" for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
    for trace in figure.data:
        if trace.name in pruned:
            trace.update(line={"dash": "dot"}, name=f"{trace.name} (pruned)")
        else:
            trace.update(line={"width": 3})
    figure.update_layout(showlegend=True)


def _table(rows) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _summary(study, trials) -> str:
    states = {s.name.lower(): sum(1 for t in trials if t.state == s)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    # an interrupted trial is FAIL in Optuna, though nothing in it failed: counted apart
    states["interrupted"] = sum(1 for t in trials if t.state == TrialState.FAIL and interrupted(t))
    states["fail"] -= states["interrupted"]
    data = data_summary(study)
    yes, no = data["yes"], data["no"]
    rows = [("trials", f"{len(trials)} (" + ", ".join(f"{n} {s}" for s, n in states.items() if n) + ")")]
    if yes + no:
        rows.append(("data", f"{yes + no} images: YES {yes}, NO {no} (YES share {yes / (yes + no):.1%}), "
                             f"{data['valid']} for validation"))
    if data["excluded"]:
        rows.append(("excluded", ", ".join(f"{reason} {n}" for reason, n in data["excluded"].items())))
    if data["fingerprint"]:
        rows.append(("split fingerprint", data["fingerprint"]))
    return _table(rows + gains_rows(study, search_gains(study)))


def _best_section(study, trials, store) -> str:
    best = best_or_none(study)
    if best is None:
        return '<section id="best"><h2>Best trial</h2><p class="missing">No trial has completed yet.</p></section>'
    record = record_of(best)
    rows = [("trial", best.number), ("val_loss", f"{best.value:.4f}")]
    if record.result is not None:
        rows.append(("its value is", schedule_text(record)))
    rows += [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in best.params.items()]
    rows += [(key, f"{value:.4f}" if isinstance(value, float) else value)
             for key, value in result_metrics(record).items() if key != "val_loss"]
    for key in ("majority_accuracy", "epochs"):
        if key in attrs_of(best):
            value = attrs_of(best)[key]
            label = "epochs run" if key == "epochs" else key
            rows.append((label, f"{value:.4f}" if isinstance(value, float) else value))
    last = last_epoch_loss(best, record)
    if last is not None:
        rows.append((f"last epoch ({last[0]}) val_loss", f"{last[1]:.4f}"))
    pictures = trial_pictures(best, storage_of(study), store) if store is not None else {}
    if pictures:
        images = "".join(
            f'<figure><figcaption>{html.escape(CURVE_TITLES[name])}</figcaption>'
            f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(pictures[name]).decode()}">'
            f'</figure>' for name in PICTURES if name in pictures)
    else:
        images = ('<p class="missing">No pictures stored for this trial (it ran without them, or the '
                  'artifact folder is elsewhere: see --artifact-dir).</p>')
    return (f'<section id="best"><h2>Best trial: {best.number}</h2>{_table(rows)}'
            f'<h3>Its curves</h3><div class="pictures">{images}</div></section>')


def _lr_find_section(study) -> str:
    """The study's learning-rate range tests (`swipr lr-find`, the search's own), every version,
    each drawn again from the curve stored on the study, so the page needs no artifact folder for
    them; a malformed record is left out with one line saying why."""
    records, skipped = recorded_findings(study)
    notes = "".join(f'<p class="missing">Skipped: {html.escape(why)}.</p>' for why in skipped)
    if not records:
        return ('<section id="lr-find"><h2>Learning-rate finder</h2><p class="missing">No range test yet: '
                f'<code>swipr lr-find STUDY.toml</code> runs one and keeps it on the study.</p>{notes}</section>')
    parts = []
    with tempfile.TemporaryDirectory(prefix="swipr-report-") as tmp:
        for number, record in enumerate(records):
            finding = finding_of(record)
            picture = plot_lr_find(finding, Path(tmp) / f"{number}.png", record.get("lr_range"))
            rows = [(name, f"{lr:.1e}") for name, lr in finding.suggestions.items()]
            rows += [(name, f"none: {why}") for name, why in finding.unreadable.items()]
            rows.append(("run", f"{record.get('num_it')} batches, {record.get('when', '?')}"))
            cost = record.get("cost") if isinstance(record.get("cost"), dict) else {}
            if cost:
                by = f"trial {cost['trial']}" if cost.get("trial") is not None else cost.get("by", "?")
                rows.append(("cost", f"{cost.get('seconds')} s ≈ {cost.get('epochs_equivalent')} epochs, by {by}"))
            version = f"v{record['version']}" + (" (the search uses it)" if record.get("current") else "")
            data = base64.b64encode(picture.read_bytes()).decode()
            parts.append(f"<h3>{html.escape(finding_title(finding))}, {html.escape(version)}</h3>{_table(rows)}"
                         f'<div class="pictures"><img alt="lr_find.png" src="data:image/png;base64,{data}"></div>')
    return f'<section id="lr-find"><h2>Learning-rate finder</h2>{"".join(parts)}{notes}</section>'


def render_report(study, store=None, storage_text: str = "") -> str:
    trials = study.get_trials(deepcopy=False)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"Study {study.study_name}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(storage_text)} &middot; generated {html.escape(generated)}</p>',
        _summary(study, trials),
        _best_section(study, trials, store),
        _lr_find_section(study),
        *_plot_sections(study),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(study_file, out_dir: Path, artifact_dir: Path | None = None) -> Path:
    """Write `out_dir/report.html` (temp file, then rename); return its path. The study is only
    read (SQLite opened read-only), so a study on read-only media can be reported on."""
    study = open_study(study_file, create=False, read_only=True)
    directory = artifact_dir or default_artifact_dir(study_file)
    store = open_artifact_store(directory, create=False) if directory.is_dir() else None
    page = render_report(study, store, f"storage {redact(study_file.study.storage)}")
    target, tmp = out_dir / REPORT_FILE, None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".report-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(page)
        os.chmod(tmp, 0o644)   # mkstemp makes it private; a report is for sharing
        os.replace(tmp, target)   # a reader never sees half a page
    except OSError as error:
        raise SwiprError(f"--out {out_dir}: can't write the report there: {error.strerror or error}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return target


def report_command(args) -> int:
    """`swipr study report STUDY.toml --out DIR [--artifact-dir DIR]`."""
    quiet_optuna()
    study_file = load_study_file(args.study_file)
    check_artifact_dir(args.artifact_dir)
    print(f"wrote {write_report(study_file, args.out, args.artifact_dir)}")
    return 0
