"""[study] learn_from: a new study starts from earlier studies' best configurations and, for TPE,
their finished trials by rank; none of them ever counts as the new study's own."""
from __future__ import annotations

from pathlib import Path

import pytest

from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import study_toml


def _file(folder: Path, name: str, learn_from: str | None = None, **kwargs) -> Path:
    extra = {"study": f"learn_from = {learn_from}\n"} if learn_from is not None else {}
    path = folder / f"{name}.toml"
    path.write_text(study_toml(folder / "data", name=name, extra={**extra, **kwargs.pop("extra", {})}, **kwargs))
    return path


def test_learn_from_is_resolved_beside_the_study_file(tmp_path):
    _file(tmp_path, "old")
    (tmp_path / "sub").mkdir()
    _file(tmp_path / "sub", "older")
    new = load_study_file(_file(tmp_path, "new", '["old.toml", "sub/older.toml"]'))
    assert new.study.learn_from == ((tmp_path / "old.toml").resolve(), (tmp_path / "sub/older.toml").resolve())
    assert new.study.learn_from_top == 3 and new.study.learn_from_sampler
    assert load_study_file(_file(tmp_path, "one", '"old.toml"')).study.learn_from == ((tmp_path / "old.toml").resolve(),)


@pytest.mark.parametrize("learn_from, message", [
    ('"gone.toml"', "[study] learn_from: " ),
    ('"new.toml"', "[study] learn_from: new.toml is this study itself"),
    ("3", "[study] learn_from must be a string, got 3"),
    ('["old.toml", "old.toml"]', "[study] learn_from names a study file twice"),
])
def test_bad_learn_from_names_the_key(tmp_path, learn_from, message):
    _file(tmp_path, "old")
    with pytest.raises(SwiprError, match=None) as error:
        load_study_file(_file(tmp_path, "new", learn_from))
    assert message in str(error.value) and "\n" not in str(error.value)
    if learn_from == '"gone.toml"':
        assert "gone.toml: study file not found" in str(error.value)


def test_a_cycle_of_studies_learning_from_each_other_is_refused(tmp_path):
    _file(tmp_path, "a", '"b.toml"')
    _file(tmp_path, "b", '"c.toml"')
    _file(tmp_path, "c", '"a.toml"')
    with pytest.raises(SwiprError, match=r"a\.toml: \[study\] learn_from: a cycle .*\(a.toml -> b.toml -> c.toml -> a.toml\)"):
        load_study_file(tmp_path / "a.toml")


def test_learn_from_top_below_zero_is_refused(tmp_path):
    with pytest.raises(SwiprError, match=r"\[study\] learn_from_top must be 0 or more, got -1"):
        load_study_file(_file(tmp_path, "new", extra={"study": "learn_from_top = -1\n"}))
