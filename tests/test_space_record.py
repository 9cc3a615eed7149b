"""The search space recorded on a study: readable attrs, and older studies still read."""
import optuna
from optuna.distributions import FloatDistribution, distribution_to_json

from search.study.space_record import SPACE_ATTR, check_space, recorded_space
from search.studyfile import load_study_file
from tests.studykit import write_study


def test_the_space_is_stored_as_plain_dicts_and_the_old_escaped_text_still_reads(tmp_path):
    study_file = load_study_file(write_study(tmp_path, tmp_path / "data"))
    study = optuna.create_study()
    assert check_space(study, study_file) == []
    stored = recorded_space(study)
    assert stored is not None and SPACE_ATTR not in study.user_attrs   # a system attr: `optuna studies` stays readable
    # a dict a person (and the dashboard) reads, not a string of escaped JSON
    assert stored["batch_size"] == {"name": "CategoricalDistribution", "attributes": {"choices": [16, 32]}}

    old = optuna.create_study()   # a study recorded before: {name: distribution_to_json text}
    old.set_user_attr(SPACE_ATTR, {"lr": distribution_to_json(FloatDistribution(1e-4, 5e-2, log=True))})
    notes = check_space(old, study_file)   # read back as the distribution it was: a narrower range now
    assert notes == ["note: [space] lr changed from numbers 0.0001..0.05, log to numbers 0.001..0.03, log; study "
                     f"'{old.study_name}' goes on with it"]
    recorded = recorded_space(old)
    assert recorded is not None and isinstance(recorded["lr"], dict)
