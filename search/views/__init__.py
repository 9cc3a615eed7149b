"""What a person sees: progress lines and bars, trial pictures and notes, the dashboard, the report."""
