"""One module per `swipr` command: its `add_parser(...)` and what the command runs.
search/cli.py imports a command's module only when that command is on the command line."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["dashboard", "demo_data", "fit", "labels", "lr_find", "predict", "study"]
