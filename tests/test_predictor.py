"""Serving: the predictor reproduces the stacking stage's own test prediction with ONNX Runtime only, its health check
passes on a fresh promotion and names the model and the check when any file changes by one byte, and the CLI."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.prepare import load_table
from macd_nb.core.registry import promote
from macd_nb.core.rundir import sha256_file
from macd_nb.pipeline.cli import main
from macd_nb.serve import MLPredictor
from macd_nb.serve.predictor import standardize


@pytest.fixture(scope="module")
def served(tmp_path_factory, deployable_run):
    "The shared deployable smoke run (LightGBM, XGBoost and the LSTM, stacked, exported), promoted to 1h."
    root = tmp_path_factory.mktemp("served")
    registry, run_dir = root / "registry", deployable_run(root / "run_s")
    promote(registry, run_dir, "1h", why="test")
    return run_dir, registry


def _registry_copy(served, tmp_path):
    run_dir, registry = served
    copy = tmp_path / "registry"
    shutil.copytree(registry, copy)
    return copy


def test_served_probabilities_are_the_stages_own(served):
    run_dir, registry = served
    predictor = MLPredictor("1h", registry)
    table, _ = load_table(run_dir, "1h")
    test = pd.read_parquet(run_dir / "test" / "stacking_1h.parquet")
    for bar in test.index[-5:]:
        out = predictor.predict(table.loc[:bar].iloc[-300:])
        assert out["p_up"] == pytest.approx(test.loc[bar, "pred"], abs=1e-6), bar
        for model in ("lgb", "xgb"):
            base = pd.read_parquet(run_dir / "test" / f"{model}_1h.parquet")
            assert out["models"][model] == pytest.approx(base.loc[bar, "pred"], abs=1e-6), (model, bar)


def test_the_scaler_is_the_training_one(served):
    from macd_nb.models.sequences import Standardizer
    x = np.random.default_rng(0).normal(size=(50, 4)) * 100
    x[3, 1] = np.nan
    scaler = {"mean": [1.0, -2.0, 0.5, 3.0], "std": [2.0, 0.5, 1.0, 4.0]}
    np.testing.assert_array_equal(standardize(x, scaler), Standardizer.from_dict(scaler).transform(x))


def test_a_fresh_promotion_is_healthy(served):
    report = MLPredictor("1h", served[1]).health_check()
    assert report["status"] == "healthy", report["reasons"]
    assert set(report["models"]) == {"lgb", "xgb", "lstm", "stacking_meta"}
    for checks in report["models"].values():
        assert {"present", "sha256_matches_manifest", "metadata_complete", "loads", "golden_prediction"} <= set(checks)


@pytest.mark.parametrize("name", ["lgb_1h.onnx", "xgb_1h.onnx", "lstm_1h.onnx", "stacking_meta_1h.onnx",
                                  "lstm_1h.golden.npz"])
def test_one_changed_byte_makes_it_unhealthy_and_names_the_model(served, tmp_path, name):
    registry = _registry_copy(served, tmp_path)
    path = registry / "runs" / "run_s" / "models" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    report = MLPredictor("1h", registry).health_check()
    model = name.split("_1h")[0]
    assert report["status"] == "unhealthy"
    assert any(r.startswith(f"{model}: sha256_matches_manifest failed") and name in r for r in report["reasons"]), report["reasons"]


def test_incomplete_metadata_is_named(served, tmp_path):
    registry = _registry_copy(served, tmp_path)
    meta = registry / "runs" / "run_s" / "models" / "lstm_1h.json"
    record = json.loads(meta.read_text())
    del record["scaler"]
    meta.write_text(json.dumps(record))
    reasons = MLPredictor("1h", registry).health_check()["reasons"]      # edited after packaging: refused by its hash
    assert any(r.startswith("lstm: metadata_complete failed (unreadable metadata:") and "does not match the manifest" in r
               for r in reasons), reasons
    manifest_path = registry / "runs" / "run_s" / "MANIFEST.json"       # packaged that way: the missing key is named
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["models/lstm_1h.json"]["sha256"] = sha256_file(meta)
    manifest_path.write_text(json.dumps(manifest))
    reasons = MLPredictor("1h", registry).health_check()["reasons"]
    assert any(r.startswith("lstm: metadata_complete failed (missing keys ['scaler'])") for r in reasons), reasons


def test_the_health_command_prints_json_and_fails_when_unhealthy(served, tmp_path, capsys):
    registry = _registry_copy(served, tmp_path)
    assert main(["health", "--registry", str(registry), "--alias", "1h"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "healthy"
    (registry / "runs" / "run_s" / "models" / "xgb_1h.onnx").write_bytes(b"not a model")
    assert main(["health", "--registry", str(registry), "--alias", "1h"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "unhealthy"
    assert main(["health", "--registry", str(tmp_path / "empty"), "--alias", "1h"]) == 2


def test_bars_that_lack_an_input_a_model_reads_are_refused_naming_model_and_column(served):
    "The smoke run reads taker volumes and trade counts (its feature_inputs); bars without them cannot be served."
    from macd_nb.serve.predictor import InputsUnavailable
    run_dir, registry = served
    predictor = MLPredictor("1h", registry)
    needs = predictor.required_inputs()
    assert needs["lgb"] == ["taker_buy_base", "trades"]
    times = pd.date_range("2025-12-01", periods=3, freq="1h", tz="UTC")
    bars = pd.DataFrame({"close": [1.0, 1.1, 1.2], "volume": 5.0, "taker_buy_base": [2.0, 2.0, np.nan], "trades": 40}, index=times)
    with pytest.raises(InputsUnavailable, match=r"lgb reads taker_buy_base; .*taker_buy_base empty after 2025-12-01 01:00"):
        predictor.check_inputs(bars)
    predictor.check_inputs(bars.iloc[:2])                                  # defined on the newest bar: served
    with pytest.raises(InputsUnavailable, match="trades absent"):
        predictor.check_inputs(bars.iloc[:2].drop(columns="trades"))
    table, _ = load_table(run_dir, "1h")
    rows = table.iloc[-300:].copy()
    rows.iloc[-1, rows.columns.get_loc("taker_buy_ratio")] = np.nan
    with pytest.raises(ValueError, match=r"lgb: feature\(s\) \['taker_buy_ratio'\] undefined"):
        predictor.predict(rows)


def test_health_covers_every_record_serving_reads(served, tmp_path):
    registry = _registry_copy(served, tmp_path)
    prepare = registry / "runs" / "run_s" / "results" / "prepare.json"
    prepare.write_text(prepare.read_text().replace('"target"', '"tarjet"'))
    report = MLPredictor("1h", registry).health_check()
    assert report["status"] == "unhealthy"
    assert any(r.startswith("run: serving_config failed") and "prepare.json" in r for r in report["reasons"]), report["reasons"]
