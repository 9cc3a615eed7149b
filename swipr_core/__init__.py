"""From a pics database to a trained, exported model: labels, split, image cache, loaders, model,
training, metrics, bundle and predict. No Optuna here: the search is built on top of it."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["bundle", "bundle_writer", "checkpoints", "data", "demo_data", "errors", "labels", "lr_find", "lr_finding", "metrics",
           "model", "model_spec", "predict", "schedule", "split", "threads", "training", "tta", "tta_model", "writable"]
