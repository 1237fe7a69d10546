"""Issue 20, parts 4 and 5: deployment gates from intervals, and stacking inputs that follow the run's plan (through the CLI)."""
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from macd_nb.core.config import profile_config, read_config, save_config
from macd_nb.core.prepare import prepare_run
from macd_nb.models.lgb import run_lgb
from macd_nb.models.xgb import run_xgb
from macd_nb.core.rundir import RunPaths, read_json
from macd_nb.core.validation import auc
from macd_nb.models.stacking import best_feature_oof, run_stacking
from macd_nb.pipeline.cli import main
from conftest import needs_shared_data

GATES_ON = "stacking_oof_auc_ci_above: 0.5\nstacking_gain_ci_above: 0.0\nstacking_min_oof: {1h: 500}\n"   # the defaults, smoke-sized


def _run(tmp_path, *argv) -> int:
    "`macd-nb run ...` into tmp_path's runs/ and reports/."
    return main(["run", *argv, "--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")])


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    "A smoke run of the CPU stages prepare, lgb, xgb, stacking with the default stacking inputs and the default gates on."
    root = tmp_path_factory.mktemp("gates")
    (root / "gates.yaml").write_text(GATES_ON)
    code = _run(root, "--profile", "smoke", "--config", str(root / "gates.yaml"), "--run-id", "cpu",
                "--only", "prepare", "lgb", "xgb", "stacking")
    return code, root, root / "runs" / "cpu"


def test_inputs_naming_a_model_the_run_does_not_train_are_refused_up_front(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("stacking_base_models: [lgb, xgb, lstm, tft]\n")
    code = _run(tmp_path, "--profile", "smoke", "--config", str(tmp_path / "bad.yaml"), "--run-id", "bad",
                "--only", "prepare", "lgb", "xgb", "stacking")
    err = capsys.readouterr().err
    assert code == 2 and "stacking_base_models" in err and "['lstm', 'tft']" in err, err
    assert not (tmp_path / "runs" / "bad").exists()          # before any stage ran, nothing written


def test_default_inputs_are_the_base_models_the_run_trains(cpu_run):
    code, _, run_dir = cpu_run
    assert code == 0
    assert read_config(run_dir).stacking.base_models == ["lgb", "xgb"]      # resolved at the start, saved with the run
    record = read_json(RunPaths(run_dir).result_file("stacking", "1h"))
    assert record["meta"]["inputs"] == ["lgb", "xgb"]


def test_each_gate_says_value_threshold_interval_and_why(cpu_run):
    _, _, run_dir = cpu_run
    record = read_json(RunPaths(run_dir).result_file("stacking", "1h"))
    gates = {g["name"]: g for g in record["gates"]}
    assert list(gates) == ["oof_auc_ci95_low", "gain_over_best_feature_ci95_low", "n_oof"]
    m, gain = record["metrics"], record["reference_gains"]["best_feature"]
    assert gates["oof_auc_ci95_low"]["interval"] == m["oof_auc_ci95"] and gates["oof_auc_ci95_low"]["value"] == m["oof_auc_ci95"][0]
    assert gates["gain_over_best_feature_ci95_low"]["interval"] == gain["ci95"] and gates["n_oof"]["value"] == m["n_oof"]
    for g in gates.values():
        assert g["passed"] == (g["value"] > g["threshold"] if g["op"] == ">" else g["value"] >= g["threshold"])
        assert g["why"].startswith(f"{g['name']} {'passes' if g['passed'] else 'fails'}: ")
    assert record["deployable"] == all(g["passed"] for g in gates.values())
    assert record["not_deployable_because"] == [g["why"] for g in gates.values() if not g["passed"]]


def test_the_gain_is_over_the_best_single_feature_on_the_same_bars(cpu_run):
    "Recomputed from the files: the stacked OOF predictions against the base stages' best-feature reference."
    _, _, run_dir = cpu_run
    record = read_json(RunPaths(run_dir).result_file("stacking", "1h"))
    config = read_config(run_dir).for_timeframe("1h")
    stacked = pd.read_parquet(RunPaths(run_dir).oof_file("stacking", "1h"))
    feature, reference = best_feature_oof(run_dir, "1h", config, stacked.index)
    both = stacked.assign(feature=feature).dropna()
    gain = record["reference_gains"]["best_feature"]
    assert gain["n"] == len(both) == record["metrics"]["n_oof_scored"]
    assert gain["gain"] == pytest.approx(auc(both["y"], both["pred"]) - auc(both["y"], both["feature"]), abs=1e-12)
    assert gain["ci95"][0] <= gain["gain"] <= gain["ci95"][1]
    lgb = read_json(RunPaths(run_dir).result_file("lgb", "1h"))   # the same reference every base stage reports
    assert record["best_feature"]["per_fold"] == lgb["best_feature"]["per_fold"]


def test_the_reference_systems_absolute_bar_is_a_setting_that_can_fail(cpu_run, tmp_path):
    _, _, run_dir = cpu_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    record = run_stacking(read_config(copy).replace(stacking_oof_auc=0.99), copy, "1h")
    assert not record["deployable"] and record["gates"][0]["name"] == "stacking_oof_auc"
    assert any(why.startswith("stacking_oof_auc fails: OOF AUC") for why in record["not_deployable_because"])


def test_resume_accepts_corrected_stacking_inputs_and_refuses_settings_completed_stages_read(tmp_path, capsys):
    "A run made before stacking inputs followed the plan: its config names the LSTM and TFT, which it never trains."
    assert _run(tmp_path, "--profile", "smoke", "--run-id", "old", "--only", "prepare", "lgb", "xgb") == 0
    run_dir = tmp_path / "runs" / "old"
    save_config(read_config(run_dir).replace(stacking_base_models=["lgb", "xgb", "lstm", "tft", "lgb_cross"]), run_dir)
    resume = ["--run-id", "old", "--resume", "--only", "prepare", "lgb", "xgb", "stacking"]
    capsys.readouterr()
    assert _run(tmp_path, *resume) == 2                        # its own inputs will never exist: refused up front
    err = capsys.readouterr().err
    assert "stacking_base_models" in err and "['lstm', 'tft', 'lgb_cross']" in err and "--config" in err, err
    (tmp_path / "rounds.yaml").write_text("gbm_rounds: 7\nstacking_base_models: [lgb, xgb]\n")
    assert _run(tmp_path, *resume, "--profile", "smoke", "--config", str(tmp_path / "rounds.yaml")) == 2
    err = capsys.readouterr().err
    assert "gbm_rounds" in err and "['lgb', 'xgb']" in err and "have completed" in err, err   # lgb and xgb read it
    lgb_model = (run_dir / "models" / "lgb_1h.txt").stat().st_mtime_ns
    (tmp_path / "fixed.yaml").write_text("stacking_base_models: [lgb, xgb]\n")
    assert _run(tmp_path, *resume, "--profile", "smoke", "--config", str(tmp_path / "fixed.yaml")) == 0
    assert "stacking_base_models" in capsys.readouterr().err    # the change is said
    assert (run_dir / "models" / "lgb_1h.txt").stat().st_mtime_ns == lgb_model   # base models reused, not retrained
    assert read_json(RunPaths(run_dir).result_file("stacking", "1h"))["meta"]["inputs"] == ["lgb", "xgb"]
    saved = read_json(run_dir / "config.json")
    assert saved["config"]["stacking_base_models"] == ["lgb", "xgb"] and len(saved["changed_on_resume"]) == 1
    status = {s["name"]: s["status"] for s in read_json(tmp_path / "reports" / "old" / "status.json")["stages"]}
    assert status == {"prepare": "reused", "lgb": "reused", "xgb": "reused", "stacking": "completed"}


FULL_CPU = ["prepare", "lgb", "xgb", "cross_asset", "stacking"]


@needs_shared_data
@pytest.mark.slow
@pytest.mark.skipif("MACD_NB_FULL_PROFILE" not in os.environ,
                    reason="the full profile's CPU stages on real data take about 20 minutes on 2 cores: set "
                           "MACD_NB_FULL_PROFILE=<folder> to run them (a run left there is resumed)")
def test_the_full_profiles_cpu_stages_on_real_data_end_deployable_or_name_the_gate(shared_data):
    "No configuration edits: the full profile, the shared klines, the CPU stages; the 1h stacked model deploys, or says why."
    root = Path(os.environ["MACD_NB_FULL_PROFILE"])
    resume = ["--resume"] if (root / "runs" / "full-cpu" / "config.json").exists() else []
    code = _run(root, "--profile", "full", "--data", str(shared_data), "--only", *FULL_CPU, "--run-id", "full-cpu", *resume)
    assert code == 0
    record = read_json(RunPaths(root / "runs" / "full-cpu").result_file("stacking", "1h"))
    report = (root / "reports" / "full-cpu" / "TRAINING_REPORT.md").read_text()
    if record["deployable"]:
        assert all(g["passed"] for g in record["gates"]) and "**Stacking 1h: deployable**" in report
    else:
        failed = [g["name"] for g in record["gates"] if not g["passed"]]
        assert failed and all(f"{name} fails" in report for name in failed), (failed, record["not_deployable_because"])
    assert record["metrics"]["n_oof"] >= 20_000 and record["thresholds"]["min_oof_auc"] is None   # the defaults, unedited


def test_the_quick_profile_gates_fail_on_a_market_with_no_edge(tmp_path):
    "The quick run deploys because its market has an edge to find (test_end_to_end): on one without, the same gates refuse."
    config = profile_config("quick", synthetic_edge=0.0, stacking_base_models=["lgb", "xgb"])
    prepare_run(config, tmp_path)
    run_lgb(config, tmp_path), run_xgb(config, tmp_path)
    record = run_stacking(config, tmp_path)
    gates = {g["name"]: g for g in record["gates"]}
    assert gates["n_oof"]["passed"] and gates["n_oof"]["threshold"] == 20_000   # enough bars: size alone decides nothing
    assert not gates["gain_over_best_feature_ci95_low"]["passed"], gates
    assert not record["deployable"] and record["not_deployable_because"]
    assert abs(record["metrics"]["oof_auc"] - 0.5) < 0.02, record["metrics"]
