"""The study files in studies/ ship the search strategy bench/README.md names as the winner of
bench/search_efficiency.py: sampler, pruner, where trials are judged, and the n_cycles mode."""
from __future__ import annotations

import re
import tomllib

import pytest

from objectives.space import DEFAULT_N_CYCLES_MODE
from search.studyfile import load_study_file
from tests.studykit import ROOT

WINNER_LINE = re.compile(r"^winner \(bench/search_efficiency\.py\): (\{.*\})$", re.MULTILINE)
STUDY_FILES = sorted((ROOT / "studies").glob("*.toml"))


def measured_winner() -> dict[str, str]:
    """The one `winner (bench/search_efficiency.py): { ... }` line of bench/README.md, read as TOML."""
    lines = WINNER_LINE.findall((ROOT / "bench" / "README.md").read_text())
    assert len(lines) == 1, f"bench/README.md names {len(lines)} winners"
    return tomllib.loads(f"winner = {lines[0]}")["winner"]


def shipped_strategy(path) -> dict[str, str]:
    study = load_study_file(path).study
    # "" is the default: "budget" for a new study (objectives.space.DEFAULT_N_CYCLES_MODE)
    return {"sampler": study.sampler, "pruner": study.pruner, "prune_at": study.prune_at,
            "n_cycles": study.n_cycles or DEFAULT_N_CYCLES_MODE}


def test_the_winner_line_names_every_part_of_the_strategy():
    assert set(measured_winner()) == {"sampler", "pruner", "prune_at", "n_cycles"}


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda path: path.name)
def test_a_shipped_study_file_uses_the_measured_winner(path):
    assert shipped_strategy(path) == measured_winner()


def test_every_shipped_study_file_is_checked():
    assert {path.name for path in STUDY_FILES} >= {"demo.toml", "swipr_resnext50.toml"}
