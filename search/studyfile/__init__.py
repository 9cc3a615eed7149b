"""The study file: read once, at the edge, into frozen dataclasses (see sections.py)."""
from search.studyfile.load import load_study_file
from search.studyfile.sections import StudyFile, StudySection, TrainSection

# The public surface: these names, and the modules other packages use.
__all__ = ["StudyFile", "StudySection", "TrainSection", "load_study_file", "fields", "space", "trained_with", "url_text"]
