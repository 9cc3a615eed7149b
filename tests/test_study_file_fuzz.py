"""Generated study files: each one either loads or ends with one line that names the file,
never another exception. The keys, types and values are the kinds users type by mistake."""
from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import study_toml

KEYS = {
    "study": ["name", "storage", "sampler", "pruner", "pruner_startup_trials", "pruner_warmup_epochs", "seed",
              "warm_start", "n_trials", "timeout", "heartbeat_interval", "grace_period", "max_retry",
              "max_failures_in_a_row", "colour"],
    "data": ["database", "image_root", "labels_file", "cache_dir", "cache_px", "valid_pct", "split_seed", "extra"],
    "data.rules": ["yes_dirs", "no_dirs", "invalid_labels", "fail_labels", "fail_on_male", "min_people",
                   "max_people", "min_age", "max_age", "max_kids"],
    "model": ["arch", "pretrained", "weights", "depth"],
    "train": ["device", "head_epochs", "precision", "compile", "optimizer"],
    "space": ["lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult", "dropout"],
}
EXTREME_INTS = st.sampled_from([0, -1, 1, 2, 7, 2**31, 2**40, 2**63 - 1, -(2**63)])
ODD_STRINGS = st.sampled_from(["", " ", "tpe", "median", "cuda:0", "auto", "../..", "/", "é", "a\tb", "x" * 300,
                               "postgresql://u:p@ss@127.0.0.1/db", "journal:///x.log", "frozen", "nan"])
SCALARS = st.one_of(st.booleans(), EXTREME_INTS, st.integers(-1000, 1000), ODD_STRINGS,
                    st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.fixed_dictionaries({}, optional={"low": SCALARS, "high": SCALARS, "log": SCALARS,
                                                       "step": SCALARS, "lo": SCALARS}))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


@st.composite
def edits(draw):
    section = draw(st.sampled_from(sorted(KEYS)))
    return section, draw(st.sampled_from(KEYS[section])), draw(VALUES)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(edits(), min_size=1, max_size=4))
def test_every_study_file_loads_or_is_one_line(tmp_path, changes):
    text = study_toml(tmp_path)
    for section, key, value in changes:
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines).replace(f"[{section}]\n", f"[{section}]\n{key} = {toml_value(value)}\n", 1)
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pass   # the loader must say so in one line too
    try:
        load_study_file(path)
    except SwiprError as error:
        message = str(error)
        assert "\n" not in message and str(path) in message, message


def test_the_fuzzers_values_reach_the_checks(tmp_path):
    # Teeth: an edit the generator makes is one the loader refuses, naming the key.
    path = tmp_path / "fuzz.toml"
    path.write_text(study_toml(tmp_path).replace("[study]\n", "[study]\nseed = 9223372036854775807\n", 1)
                    .replace("seed = 0\n", ""))
    with pytest.raises(SwiprError, match=r"\[study\] seed must be between"):
        load_study_file(path)
