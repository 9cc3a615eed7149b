"""The photos as a dataset: labels from the pics database, the fixed split, the decoded image
cache and the batches drawn from it. Imports neither swipr_core.train nor swipr_core.serve."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["dataset", "demo", "images", "labels", "loaders", "split", "writable"]
