"""Do hyperparameters matter on the demo data? Train a handful of configs, print final val loss.

Writes fresh demo data (as `swipr demo-data` does), splits it as studies/demo.toml does, and
trains each config below with the project's own `train()` on the CPU: the tiny network of the
demo study. Prints one row per config and the spread between the best and the worst.

    PYTHONPATH=. .venv/bin/python bench/demo_difficulty.py [--images N] [--seed S] [--threads T]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

# (lr, batch, px, freeze, n_cycles, cycle_len, cycle_mult): lr from far too low to too high,
# SGDR shapes and freeze strategies from studies/demo.toml's [space].
CONFIGS = [
    (1e-4, 16, 32, "unfrozen", 2, 1, 2),
    (1e-3, 16, 32, "unfrozen", 2, 1, 2),
    (5e-3, 16, 32, "unfrozen", 2, 1, 2),
    (2e-2, 16, 32, "unfrozen", 2, 1, 2),
    (5e-2, 16, 32, "unfrozen", 2, 1, 2),
    (5e-3, 16, 32, "unfrozen", 2, 1, 1),
    (5e-3, 16, 32, "unfrozen", 3, 1, 1),
    (5e-3, 16, 32, "unfrozen", 3, 1, 2),
    (5e-3, 16, 32, "frozen_then_unfrozen", 2, 1, 2),
    (5e-3, 32, 40, "unfrozen", 2, 1, 2),
]


def prepare(folder: Path, n_images: int, seed: int):
    from swipr_core.data.dataset import DataSpec, prepare_data
    from swipr_core.data.demo import DEMO_RULES, write_demo_data

    database = write_demo_data(folder, n_images=n_images, seed=seed)
    # studies/demo.toml's [data]: cache_px 48, valid_pct 0.2, split_seed 42
    spec = DataSpec(database=database, image_root=folder, labels_file=folder / "labels.csv",
                    cache_dir=folder / "cache", cache_px=48, valid_pct=0.2, split_seed=42, rules=DEMO_RULES)
    return prepare_data(spec)


def main() -> None:
    from swipr_core.data.demo import DEFAULT_IMAGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0, help="demo data seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a shared machine: 1)")
    args = parser.parse_args()

    import torch

    from swipr_core.train.model import ModelSpec
    from swipr_core.train.run import train
    from swipr_core.train.schedule import TrainConfig

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = prepare(Path(tmp) / "demo", args.images, args.seed)
        counts = dataset.split.counts()
        print(f"demo data: {args.images} rows, seed {args.seed}, split {counts}")
        print(f"{'lr':>8} {'batch':>5} {'px':>3} {'freeze':<21} {'cycles':>6} {'mult':>4} {'epochs':>6} "
              f"{'val_loss':>8} {'val_acc':>7} {'auc':>5} {'sec':>5}")
        losses = []
        for lr, batch, px, freeze, n_cycles, cycle_len, cycle_mult in CONFIGS:
            config = TrainConfig(lr=lr, batch_size=batch, image_size=px, freeze=freeze, n_cycles=n_cycles,
                                 cycle_len=cycle_len, cycle_mult=cycle_mult, head_epochs=1, seed=0)
            started = time.perf_counter()
            metrics = train(dataset, config, ModelSpec("test_resnet", pretrained=False), device="cpu").metrics
            losses.append(metrics["val_loss"])
            print(f"{lr:>8g} {batch:>5} {px:>3} {freeze:<21} {n_cycles:>6} {cycle_mult:>4} {config.epochs:>6} "
                  f"{metrics['val_loss']:>8.4f} {metrics['val_accuracy']:>7.3f} {metrics['val_roc_auc']:>5.2f} "
                  f"{time.perf_counter() - started:>5.1f}", flush=True)
    best, worst = min(losses), max(losses)
    print(f"best {best:.4f}, worst {worst:.4f}: the worst is {100 * (worst - best) / best:.0f}% above the best; "
          f"always answering the YES share scores {prior_loss(dataset):.4f}")


def prior_loss(dataset) -> float:
    """Validation loss of a model that answers P(YES) = the training split's YES share, always."""
    targets = dataset.split.targets()
    train_yes = [targets[i] for i in dataset.split.indices(False)]
    p = sum(train_yes) / len(train_yes)
    valid = [targets[i] for i in dataset.split.indices(True)]
    return -sum(math.log(p if t else 1 - p) for t in valid) / len(valid)


if __name__ == "__main__":
    main()
