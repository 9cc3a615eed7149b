"""What the search gained: the best trial against the notebook's pipeline (when the warm start
ran it: search.study.warm_start), and the epochs pruning saved against running every trial to
its end."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from objectives.judging import BEST_STAGE_ATTR, CUT_ATTR, STAGE2_FIRST_EPOCH_ATTR, best_schedule, nesting_saved
from objectives.pausing import paused_after
from objectives.trial_attrs import attrs_of
from search.study.data_record import majority_baseline
from search.study.learn_from import learned_from_rows
from search.study.open import best_or_none
from search.study.warm_start import CHANGED_ATTR, KEPT_ATTR, NOTEBOOK, OLD_RUNS, STAGES_RUN_ATTR, WARM_START_ATTR
from search.views.format import count
from search.views.range_tests import range_test_rows
from search.views.results import accuracy_of
from search.views.stages import spans_of, stages_text


def epochs_saved(trials) -> dict:
    """Epochs run, epochs the stopped trials would still have run (planned − run): pruned ones and
    nested ones cut after a finished schedule (objectives.judging); and what nesting saved."""
    ran = [t for t in trials if "planned_epochs" in attrs_of(t)]
    # a retry's `epochs` counts the epochs it resumed after, which its original ran
    run = sum(attrs_of(t).get("epochs", 0) - attrs_of(t).get("resumed_from_epoch", 0) for t in ran)
    cut = [t for t in ran if t.state == TrialState.COMPLETE and CUT_ATTR in attrs_of(t)]
    saved = sum(attrs_of(t)["planned_epochs"] - attrs_of(t).get("epochs", 0)
                for t in ran if t.state == TrialState.PRUNED or t in cut)
    nested = sum(nesting_saved(attrs_of(t)) for t in ran if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    # scheduler = "promote": a trial paused at a cycle end and not promoted (yet) has its plan's rest unspent
    paused = [t for t in ran if t.state == TrialState.WAITING and paused_after(t) is not None]
    return {"epochs_run": run, "epochs_saved": saved, "pruned": sum(t.state == TrialState.PRUNED for t in ran),
            "cut": len(cut), "nesting_saved": nested, "paused": len(paused),
            "paused_unspent": sum(attrs_of(t)["planned_epochs"] - attrs_of(t).get("epochs", 0) for t in paused)}


def _notebook_trials(trials) -> dict[str, optuna.trial.FrozenTrial]:
    """The notebook's trial (an older study's: each notebook run's); of one retried, the one
    that got furthest."""
    found: dict[str, optuna.trial.FrozenTrial] = {}
    rank = {TrialState.COMPLETE: 2, TrialState.PRUNED: 1}
    for trial in trials:
        name = attrs_of(trial).get(WARM_START_ATTR)
        if name is not None and (name not in found or rank.get(trial.state, 0) >= rank.get(found[name].state, 0)):
            found[name] = trial
    return dict(sorted(found.items()))


def _against(best, trial, first) -> dict:
    """The notebook trial's row; `first`: the first trial of its name (a retry carries only the
    attrs Optuna's tables show, so what the warm start kept is read from the trial it retries)."""
    attrs, tagged = attrs_of(trial), attrs_of(first)
    row = {"name": attrs[WARM_START_ATTR], "number": trial.number, "state": trial.state.name,
           "epochs": attrs.get("epochs"), "planned_epochs": attrs.get("planned_epochs"),
           "val_loss": trial.value, "val_accuracy": accuracy_of(trial),
           # None on trials tagged before these were recorded: what they kept is unknown
           "kept": tagged.get(KEPT_ATTR), "changed": tagged.get(CHANGED_ATTR),
           # the notebook's stages it ran (None: an older study's run of one stage, OLD_RUNS)
           "stages": tagged.get(STAGES_RUN_ATTR), "best_stage": attrs.get(BEST_STAGE_ATTR),
           # the stages it trained (None: not started): a sampled stage2_n_cycles of 0 skips stage 2
           "ran_stages": (2 if STAGE2_FIRST_EPOCH_ATTR in attrs else 1) if "planned_epochs" in attrs else None}
    if best is not None and trial.state == TrialState.COMPLETE:
        row["loss_change_pct"] = 100 * (best.value - trial.value) / trial.value
        accuracy, best_accuracy = accuracy_of(trial), accuracy_of(best)
        if accuracy is not None and best_accuracy is not None:
            row["accuracy_change_points"] = 100 * (best_accuracy - accuracy)
    return row


def search_gains(study: optuna.Study) -> dict:
    """{"vs_notebook": [...], "epochs_run", "epochs_saved", "pruned"} for summaries and `best --json`."""
    trials = study.get_trials(deepcopy=False)
    best = best_or_none(study)
    first: dict[str | None, optuna.trial.FrozenTrial] = {}
    for trial in trials:   # in number order: the first of each name is the one the warm start queued
        first.setdefault(attrs_of(trial).get(WARM_START_ATTR), trial)
    notebook = [_against(best, trial, first[name]) for name, trial in _notebook_trials(trials).items()]
    baseline, _ = majority_baseline(study)
    return {"vs_notebook": notebook, "majority_accuracy": baseline, **epochs_saved(trials)}


def _which_notebook(row: dict) -> str:
    """How much of the notebook's pipeline the trial is: both stages, stage 1 only, or an older
    study's single run."""
    if row["name"] == NOTEBOOK and row["stages"] == 2 and row["ran_stages"] == 1:
        return "stage 2 skipped: the sampler drew stage2_n_cycles 0"
    if row["name"] == NOTEBOOK:
        return "both stages" if row["stages"] == 2 else "stage 1 only: the space has no [space.stage2]"
    if row["name"] == OLD_RUNS[1]:
        return "an older warm start: run 2 alone from the starting weights, not after run 1 as the notebook ran it"
    return ""


def _notebook_line(row: dict, best, baseline: float | None) -> str:
    parts = [f"trial {row['number']}", _which_notebook(row)]
    if row["changed"]:   # the space moved some of the notebook's values: it is the notebook's only in part
        parts.append(f"the space's {', '.join(row['changed'])}")
    if row["stages"] == 2 and row["best_stage"] == 1:   # its value is stage 1's end: stage 2 did not help
        parts.append("its best schedule skips stage 2")
    where = f"{row['name']} ({'; '.join(part for part in parts if part)})"
    if best is not None and row["number"] == best.number:
        return f"{where} is the best trial itself"
    if row["state"] == "WAITING":   # queued by the warm start; this run ended before reaching it
        return f"{where}: WAITING, not run yet; the next `swipr study run` runs it first"
    if row["state"] == "PRUNED":
        return f"{where}: pruned after {row['epochs']} of {count(row['planned_epochs'], 'epoch')}"
    if "loss_change_pct" not in row:
        return f"{where}: {row['state'].lower()}, nothing to compare"
    change = row["loss_change_pct"]
    text = (f"{where}: val_loss {row['val_loss']:.4f} -> best {best.value:.4f} "
            f"({abs(change):.1f}% {'lower' if change <= 0 else 'HIGHER'})")
    if "accuracy_change_points" in row:
        text += (f", accuracy {row['val_accuracy']:.3f} -> {accuracy_of(best):.3f} "
                 f"({row['accuracy_change_points']:+.1f} points")
        text += f"; majority baseline {baseline:.3f})" if baseline is not None else ")"
    return text


def gains_rows(study: optuna.Study, gains: dict) -> list[tuple[str, str]]:
    """(label, text) rows for the summary table and `swipr study best`."""
    best = best_or_none(study)
    baseline = gains.get("majority_accuracy")
    rows = [("vs notebook", _notebook_line(row, best, baseline)) for row in gains["vs_notebook"]]
    if not rows:
        rows.append(("vs notebook", "the warm start did not run the notebook's pipeline"))
    planned = gains["epochs_run"] + gains["epochs_saved"]
    share = f" ({100 * gains['epochs_saved'] / planned:.0f}% of {planned})" if planned else ""
    cut = f", {gains['cut']} stopped after a finished shorter schedule" if gains.get("cut") else ""
    rows.append(("pruning saved", f"{count(gains['epochs_saved'], 'epoch')}{share}: "
                                  f"{count(gains['pruned'], 'trial')} pruned{cut}, {count(gains['epochs_run'], 'epoch')} run"))
    if gains.get("paused"):   # scheduler = "promote": what the trials left paused have not spent
        planned = gains["epochs_run"] + gains["epochs_saved"] + gains["paused_unspent"]
        rows.append(("left paused", f"{count(gains['paused'], 'trial')} at a cycle end, not promoted: "
                                    f"{count(gains['paused_unspent'], 'epoch')} of their plans unspent "
                                    f"({100 * gains['paused_unspent'] / planned:.0f}% of {planned} planned in all); "
                                    f"the next `swipr study run` may promote them"))
    if gains.get("nesting_saved"):
        rows.append(("nesting saved", f"{count(gains['nesting_saved'], 'epoch')}: shorter schedules finished inside longer "
                                      f"runs, which n_cycles sampled would have trained as trials of their own"))
    schedule = best_schedule(attrs_of(best)) if best is not None else None
    if best is not None and schedule is not None:
        rows.append(("best schedule", _schedule_text(best, schedule)))
    spans = spans_of(attrs_of(best)) if best is not None else []
    if spans and best is not None and attrs_of(best).get("best_stage") == 1:
        # its value is stage 1's end: stage 2 ran (or was planned) but is not part of the result
        rows.append(("planned stages", f"{stages_text(spans)}; its best schedule ends with stage 1"))
    elif spans:   # a two-stage best trial: where each stage ran, on what
        rows.append(("best stages", stages_text(spans)))
    rows += learned_from_rows(study)
    rows += range_test_rows(study)
    return rows


def _schedule_text(best, schedule: tuple[int, int, float]) -> str:
    """The best trial's best finished schedule; with two stages, which stage it ends in (the
    budget is stage 2's cycles, 0 = stage 1's end: objectives.space.cycle_budget)."""
    n_cycles, epoch, loss = schedule
    planned = attrs_of(best)["n_cycles_budget"]
    figures = f"val_loss {loss:.4f} after epoch {epoch}"
    stage = attrs_of(best).get(BEST_STAGE_ATTR)
    trial = f"trial {best.number}'s"
    if stage == 1 and STAGE2_FIRST_EPOCH_ATTR in attrs_of(best):
        return f"{trial} stage 1 alone, stage 2 skipped ({figures}; it planned stage 2's {planned} cycles)"
    if stage == 2:
        return f"{trial} stage 1, then stage 2's {n_cycles}-cycle schedule ({figures}; it planned {planned})"
    return f"{trial} {n_cycles}-cycle schedule ({figures}; it planned {planned})"
