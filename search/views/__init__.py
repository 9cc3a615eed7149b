"""What a person sees: progress lines and bars, trial pictures and notes, the dashboard, the report."""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["artifacts", "dashboard", "epoch_table", "format", "gains", "lr_plot", "progress", "range_tests", "report",
           "results", "top_losses"]
