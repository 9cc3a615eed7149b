"""How far a replay of a finished trial lands from the trial's final validation loss.

Prints, for each COMPLETE trial of a study, the relative difference of the replayed loss
with the trial's own seed at each thread count, and with other seeds: the figures behind
search.fit's replay tolerance. Run on a study that `swipr study run` made with this code:

    .venv/bin/python bench/replay_drift.py studies/demo.toml --threads 1 2 --other-seeds 3
"""
from __future__ import annotations

import argparse
import json

import optuna
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_file")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--other-seeds", type=int, default=2, help="other seeds to try per trial")
    args = parser.parse_args()

    from search.fit.replay import train_config
    from search.study.open import open_study
    from search.studyfile import load_study_file
    from swipr_core.data.dataset import prepare_data
    from swipr_core.train.model import ModelSpec
    from swipr_core.train.run import train
    from swipr_core.train.schedule import STAGE_KEYS, TrainConfig

    study_file = load_study_file(args.study_file)
    study = open_study(study_file, create=False)
    dataset = prepare_data(study_file.data)
    spec = ModelSpec(study_file.model.arch, study_file.model.pretrained, study_file.model.weights)
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        config = train_config(trial, STAGE_KEYS, study_file)
        runs = [(threads, config.seed) for threads in args.threads]
        runs += [(args.threads[0], config.seed + k) for k in range(1, args.other_seeds + 1)]
        for threads, seed in runs:
            torch.set_num_threads(threads)
            loss = train(dataset, TrainConfig(**{**config.__dict__, "seed": seed}), spec, "cpu", "fp32").metrics["val_loss"]
            print(json.dumps({"trial": trial.number, "threads": threads, "seed": seed,
                              "own_seed": seed == config.seed, "trial_loss": trial.value, "replay_loss": loss,
                              "relative_difference": abs(loss - trial.value) / abs(trial.value)}), flush=True)


if __name__ == "__main__":
    main()
