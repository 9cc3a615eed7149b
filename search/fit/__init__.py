"""`swipr fit`: replay a finished trial, write its model bundle, link the bundle to the study."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["replay"]
