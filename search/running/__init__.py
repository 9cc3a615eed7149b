"""Running a study: the driver, one worker's loop, the multi-process supervisor, the stop flag."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["driver"]
