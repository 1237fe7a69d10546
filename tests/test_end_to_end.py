"""Across notebooks: the prepare and baseline stages on the synthetic market, and a papermill smoke run.

These are the foundation's acceptance checks: a plain logistic regression on the *base* features finds the planted
signal out of sample (walk-forward, purged), shuffled labels give none, the planted leak is flagged, and no
honest model beats the oracle (an AUC above the known ceiling would mean leakage).
"""
import json
from pathlib import Path

import pytest

from macd_nb.models.baseline import run_baseline
from macd_nb.core.stages import select_stages, stage_names
from macd_nb.export.package import deploy
from macd_nb.export.summary import summary_table
from macd_nb.serve.predictor import MLPredictor
from macd_nb.pipeline.examples import example_run
from macd_nb.core.config import profile_config
from macd_nb.core.prepare import prepare_run


@pytest.fixture(scope="module")
def two_year_run(tmp_path_factory):
    "Prepare and baseline stages on two years of the synthetic market, half-year windows."
    run_dir = tmp_path_factory.mktemp("run")
    config = profile_config("quick", n_bars=24 * 365 * 2, train_bars=24 * 180, n_folds=12, bootstrap_samples=200)
    prepared = prepare_run(config, run_dir)
    return config, run_dir, prepared, run_baseline(config, run_dir)


def test_logistic_regression_on_base_features_finds_the_signal(two_year_run):
    config, run_dir, prepared, baseline = two_year_run
    metrics = baseline.metrics
    assert metrics["oof_auc"] >= 0.53, metrics
    assert metrics["oof_auc_ci95"][0] > 0.5
    assert metrics["n_oof"] > 5000 and metrics["n_folds"] == 12


def test_no_model_beats_the_oracle(two_year_run):
    "The measured oracle is the ceiling; beating it clearly would be leakage."
    _, _, prepared, baseline = two_year_run
    oracle = prepared["oracle"]
    assert abs(oracle["measured_oracle_auc"] - oracle["nominal_oracle_auc"]) < 0.015
    assert 0.56 <= oracle["nominal_oracle_auc"] <= 0.62
    assert baseline.metrics["oof_auc"] < oracle["measured_oracle_auc"] + 0.01


def test_controls_shuffled_labels_and_planted_leak(two_year_run):
    _, _, _, baseline = two_year_run
    assert abs(baseline.controls["shuffled_label_auc"] - 0.5) <= 0.02
    assert baseline.controls["planted_leak_flagged"]
    assert baseline.controls["real_features_flagged"] == []


def test_result_json_has_the_shared_shape(two_year_run):
    _, run_dir, prepared, _ = two_year_run
    record = json.loads((run_dir / "results" / "baseline_1h.json").read_text())
    for key in ("stage", "model", "timeframe", "target", "window", "metrics", "controls", "gates", "timings_s",
                "artifacts", "data_fingerprint", "versions", "seed", "device"):
        assert key in record
    assert record["data_fingerprint"] == prepared["data_fingerprint"]
    assert record["metrics"]["n_test"] > 1000


def test_smoke_pipeline_leaves_notebooks_and_reports(tmp_path):
    report_dir = tmp_path / "reports" / "t"
    # a copy of the cached smoke run of every stage through the runner, and its report folder (raises unless every stage completed)
    example_run(tmp_path / "runs" / "t", "smoke", stage_names(), runner=True, reports=report_dir)
    assert all(stage["status"] == "completed" for stage in json.loads((report_dir / "status.json").read_text())["stages"])
    expected = sorted(Path(stage.notebook).name for stage in select_stages())
    assert len(expected) >= 2 and sorted(p.name for p in (report_dir / "executed").glob("*.ipynb")) == expected
    report = (report_dir / "TRAINING_REPORT.md").read_text()
    status = (report_dir / "EXECUTION_STATUS.md").read_text()
    assert "completed" in status and "failed" not in status
    record = json.loads((tmp_path / "runs" / "t" / "results" / "baseline_1h.json").read_text())
    assert f"{record['metrics']['oof_auc']:.4f}" in report        # the summary table comes from the JSON
    assert summary_table(tmp_path / "runs" / "t") in report
    # the smoke run ends with a package that deploy accepts and whose alias is healthy
    package = json.loads((tmp_path / "runs" / "t" / "results" / "package.json").read_text())
    deployed = deploy(tmp_path / "runs" / "t" / package["file"], tmp_path / "registry")
    assert deployed["aliases"]["1h"]["run"] == "t"
    health = MLPredictor("1h", tmp_path / "registry").health_check()
    assert health["status"] == "healthy", health["reasons"]
    assert json.loads((tmp_path / "runs" / "t" / "results" / "validation.json").read_text())["passed"]
