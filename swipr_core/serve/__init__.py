"""A trained model as a verified bundle on disk, and predictions from it on a CPU. Imports
swipr_core.data, and from swipr_core.train only flip_average (the bundle's TTA graph wraps the
trained network in it); never a run's internals."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["bundle", "bundle_writer", "predict", "tta"]
