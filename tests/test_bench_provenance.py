"""bench/provenance.py: every cache and result file says what made it, and one that this run
would not make the same way is refused in one line, never silently reused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchkit import load_bench

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def provenance():
    return load_bench("provenance")


@pytest.fixture(scope="module")
def peers():
    yield load_bench("peers")
    del sys.modules["peers"]


def block(provenance, **changes):
    made = provenance.provenance("bench/x.py", code={"bench/x.py": "a1", "search": "b2"}, space="s", data="d",
                                 split="f", threads=1, settings={"trials": 12})
    return {**made, **changes}


def test_a_block_names_commit_code_versions_and_what_was_measured(provenance):
    made = block(provenance)
    assert set(provenance.COMPARED) <= set(made)
    assert set(made["versions"]) >= {"torch", "fastai", "timm", "optuna"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert made["commit"].removesuffix("+changes") == (commit or "unknown")


def test_the_commit_is_unknown_outside_git(provenance, monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert provenance.commit() == "unknown"


def test_the_same_code_at_another_commit_is_reused_and_said_so(provenance):
    recorded = block(provenance, commit="0123abc", made_at="2026-12-01T10:00:00+00:00")
    line = provenance.check(RESULTS / "x.json", recorded, block(provenance))
    assert line == "bench/results/x.json: made 2026-12-01T10:00:00+00:00 at commit 0123abc"


def test_a_stale_result_is_refused_naming_the_file_and_what_differs(provenance):
    recorded = block(provenance, threads=2, code={"bench/x.py": "a1", "search": "old"})
    with pytest.raises(provenance.Refused) as refused:
        provenance.check(RESULTS / "x.json", recorded, block(provenance))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("bench/results/x.json: stale")
    assert "code (search)" in message and "threads 2 -> 1" in message and "bench/x.py" not in message
    with pytest.raises(provenance.Refused, match="no provenance"):
        provenance.check(RESULTS / "x.json", None, block(provenance))


def test_a_result_recorded_before_provenance_needs_the_flag_and_is_still_checked(provenance):
    old = {"recorded_before_provenance": True, "commit": "d889937", "made_at": "2026-12-01T13:24:37+00:00",
           "code": "unknown", "versions": "unknown", "space": "s", "data": "unknown", "split": "unknown",
           "threads": 1, "settings": {"trials": 12}}
    with pytest.raises(provenance.Refused, match="recorded before provenance .*--accept-unversioned"):
        provenance.check(RESULTS / "x.json", old, block(provenance))
    line = provenance.check(RESULTS / "x.json", old, block(provenance), accept_unversioned=True)
    assert "commit d889937" in line and "not checked: code, versions, data, split" in line
    with pytest.raises(provenance.Refused, match="threads 1 -> 2"):   # what it knows still counts
        provenance.check(RESULTS / "x.json", old, block(provenance, threads=2), accept_unversioned=True)


def test_every_committed_result_has_a_provenance_block(provenance):
    peers = sorted((RESULTS / "peers").glob("*.json"))
    tables = sorted(RESULTS.glob("search_efficiency_curves*.json"))
    assert peers and tables
    blocks = [json.loads(p.read_text()).get("provenance") for p in peers]
    blocks += [json.loads(t.read_text())["meta"].get("provenance") for t in tables]
    assert all(b and b["commit"] and set(provenance.COMPARED) <= set(b) for b in blocks)


def test_the_fresh_peers_runs_say_what_made_them(provenance):
    fresh = sorted(RESULTS.glob("peers-28*/*.json"))
    assert fresh
    blocks = [json.loads(p.read_text())["provenance"] for p in fresh]
    assert not any(b.get("recorded_before_provenance") for b in blocks)
    # made from a committed tree (no "+changes"), with every field known
    assert all(len(b["commit"]) == 40 and all(b[name] != provenance.UNKNOWN for name in provenance.COMPARED)
               for b in blocks)


def test_a_peers_cache_is_written_with_its_provenance_and_refused_once_stale(peers, provenance, tmp_path, capsys):
    made = {"now": block(provenance)}
    trials = [peers.Finished(3, 0.5, [(3, 0.5)])]
    ran = []

    def contender():
        ran.append(1)
        return trials

    first = peers.cached(tmp_path, "plain-0", contender, lambda: made["now"])
    assert first[0] == trials and json.loads((tmp_path / "plain-0.json").read_text())["provenance"]["threads"] == 1
    again = peers.cached(tmp_path, "plain-0", contender, lambda: made["now"], run=False)
    assert again[0] == trials and len(ran) == 1
    assert "reusing " in capsys.readouterr().out
    made["now"] = block(provenance, threads=2)
    with pytest.raises(SystemExit) as stopped:
        peers.cached(tmp_path, "plain-0", contender, lambda: made["now"])
    assert stopped.value.code == 2 and len(ran) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain-0.json" in err and "threads 1 -> 2" in err


def test_the_committed_peers_trials_are_read_only_with_the_flag(peers, provenance, capsys):
    cache = RESULTS / "peers"
    now = {"settings": {"contender": "plain", "seed": 0, "trials": 12, "images": 600}, "threads": 1}
    with pytest.raises(SystemExit):
        peers.cached(cache, "plain-0-t12-i600-th1", list, lambda: now, run=False)
    trials, _ = peers.cached(cache, "plain-0-t12-i600-th1", list, lambda: now, run=False, accept_unversioned=True)
    assert len(trials) == 12
    assert "recorded before provenance, committed" in capsys.readouterr().out


def test_a_kept_lr_finder_study_is_read_only_if_this_run_would_make_it(provenance, tmp_path, monkeypatch, capsys):
    finder = load_bench("lr_finder_vs_plain")
    outcome = finder.Outcome(trials=[finder.Trial(3, 0.0, 0.4)], train_epochs=3)
    monkeypatch.setattr(finder, "read_outcome", lambda storage, name: outcome)
    database = tmp_path / "data" / "pics.db"
    (tmp_path / "plain-0.toml").write_text(finder.study_text("plain-0", 0, database, finder.PLAIN_LR))
    (tmp_path / "plain-0.wall_s").write_text("12.5")
    made = {"now": block(provenance)}

    def kept():
        return finder.kept(tmp_path, "plain-0", 0, database, finder.PLAIN_LR, 1, lambda *_: made["now"])

    with pytest.raises(SystemExit):   # finished, but nothing says what made it
        kept()
    assert "no provenance" in capsys.readouterr().err
    (tmp_path / "plain-0.provenance.json").write_text(json.dumps(made["now"]))
    assert kept() is outcome and outcome.wall_s == 12.5
    assert "reusing " in capsys.readouterr().out
    made["now"] = block(provenance, code={"bench/x.py": "a1", "search": "changed"})
    with pytest.raises(SystemExit) as stopped:
        kept()
    assert stopped.value.code == 2 and "code (search)" in capsys.readouterr().err


def test_a_learning_curve_table_is_checked_against_what_record_would_make(tmp_path, capsys):
    efficiency = load_bench("search_efficiency")
    study = ROOT / "studies" / "demo.toml"
    efficiency.check_table(efficiency.TABLE, study, threads=1, accept_unversioned=True)
    assert "recorded before provenance, committed" in capsys.readouterr().out
    table = json.loads(efficiency.TABLE.read_text())
    table["meta"]["provenance"]["threads"] = 2
    copy = tmp_path / "curves.json"
    copy.write_text(json.dumps(table))
    with pytest.raises(SystemExit) as stopped:
        efficiency.check_table(copy, study, threads=1, accept_unversioned=True)
    assert stopped.value.code == 2 and "threads 2 -> 1" in capsys.readouterr().err
