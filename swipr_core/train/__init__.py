"""Fine-tuning: the network, a run's plan and its SGDR schedule, the run itself, range tests,
checkpoints and metrics. Imports swipr_core.data, never swipr_core.serve."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["checkpoints", "flip_average", "lr_find", "lr_finding", "metrics", "model", "model_spec", "run", "schedule", "threads"]
