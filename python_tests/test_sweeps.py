"""``python -m jwae_ext.experiments unpaired | shift | prior-weight --quick``: the sweeps' runs,
evaluations and tables on tiny data (numbers meaningless)."""

import json

import pytest

from jwae_ext import experiments, sweeps


def _run(out, *args: str) -> dict:
    assert experiments.main([*args, "--out", str(out), "--quick", "--seeds", "0"]) == 0
    return json.loads((out / f"results-{args[0]}.json").read_text())


def test_unpaired_sweep_trains_with_and_without_unpaired_data(tmp_path):
    results = _run(tmp_path, "unpaired")
    assert set(results["runs"]) == {"jwae-mh-s0", "jwae-mh-unpaired-s0"}
    assert set(results["runs"]["jwae-mh-s0"]) == {"synthetic-a", "synthetic-b"}
    metrics = (tmp_path / "runs" / "jwae-mh-unpaired-s0" / "metrics.jsonl").read_text()
    assert "unpaired_recon" in metrics
    plain = (tmp_path / "runs" / "jwae-mh-s0" / "metrics.jsonl").read_text()
    assert "unpaired_recon" not in plain
    table = (tmp_path / "results-unpaired.md").read_text()
    assert "## Test: synthetic-b" in table and "jwae-mh + unpaired synthetic-b" in table


def test_shift_sweep_tests_every_strength_and_prior_weight_sets_the_lambdas(tmp_path):
    results = _run(tmp_path, "shift", "--strengths", "0", "1")
    assert set(results["runs"]["vse++-s0"]) == {"synthetic-a", "synthetic-b@0", "synthetic-b@1"}
    cell = results["summary"]["jwae-mh"]["synthetic-b@1"]["rsum"]
    assert cell["values"] == [results["runs"]["jwae-mh-s0"]["synthetic-b@1"]["rsum"]]
    # The same folder: the default weight's row is the shared jwae-mh run, the others are new.
    results = _run(tmp_path, "prior-weight", "--weights", "0.01", "1")
    assert set(results["runs"]) == {"jwae-mh-s0", "jwae-mh-prior1-s0"}
    assert "jwae-mh, lambda3 = lambda4 = 0.01 (default)" in results["summary"]
    config = json.loads((tmp_path / "runs" / "jwae-mh-prior1-s0" / "config.json").read_text())
    assert config["lambda_img"] == config["lambda_txt"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prior-weight", "--weights", "-1"], "--weights must be distinct numbers >= 0"),
        (["shift", "--strengths", "1", "1"], "--strengths must be distinct numbers >= 0"),
    ],
)
def test_bad_sweep_values_are_refused(tmp_path, capsys, args, message):
    assert experiments.main([*args, "--out", str(tmp_path), "--quick"]) == 2
    assert message in capsys.readouterr().err


def test_markdown_has_one_table_per_test_split():
    sweep = sweeps.prior_weight_sweep([0.1])
    result = {"i2t": {"r1": 1.0, "r5": 2.0}, "t2i": {"r1": 3.0, "r5": 4.0}, "rsum": 10.0}
    result["continuity"] = {"class_agreement": {"shape": 0.5, "colour": 0.25}}
    evaluations = {sweep.rows[0].label: {0: dict.fromkeys(sweep.tests, result)}}
    summary = sweeps.summarize(sweep, evaluations)
    text = sweeps.markdown(sweep, summary, [0], "cmd")
    assert text.count("## Test:") == 2
    assert (
        "| jwae-mh, lambda3 = lambda4 = 0.1 | 1.0 | 3.0 | 2.0 | 4.0 | 10.0 | 50.0 | 25.0 |" in text
    )
