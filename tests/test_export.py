"""Stage 3, ONNX export: trees keep double-precision thresholds (a value one ulp from a threshold goes the same way as
in LightGBM), every exporter passes parity and fails it when perturbed, networks export with a dynamic batch and are
left in eval mode, and the stage writes hashed files, its record and the drift reference the monitor bins live data by."""
import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb

from macd_nb.core.config import profile_config
from macd_nb.core.rundir import sha256_file
from macd_nb.export.onnx import onnx_session, parity, perturbed, run_export
from macd_nb.models.stacking import stacking_to_onnx
from macd_nb.models.lgb import lightgbm_to_onnx
from macd_nb.models.sequences import sequence_to_onnx
from macd_nb.models.xgb import xgboost_to_onnx
from macd_nb.models.lstm import MultiHorizonLSTM
from macd_nb.models.stacking import stacked_probability
from macd_nb.models.tft import TemporalFusionTransformer
from macd_nb.pipeline.examples import example_run


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(0, 1, 4000) > 0).astype(float)
    return X, y


@pytest.fixture(scope="module")
def booster(data):
    X, y = data
    X = X.copy()
    X[::50, 3] = np.nan   # some missing values: LightGBM learns a default direction for them
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "verbose": -1, "seed": 0}
    return lgb.train(params, lgb.Dataset(X, y), 60), X


def test_lightgbm_keeps_double_thresholds_at_the_edge(booster):
    "Rows placed exactly on, one ulp below and one ulp above every split threshold go where LightGBM sends them."
    model, X = booster
    edge = _edge_rows(model, X)
    session = onnx_session(lightgbm_to_onnx(model))
    result = parity(model.predict(edge), session.run(None, {"features": edge})[0])
    assert result["passed"] and result["n"] > 300, result
    # and on ordinary rows, missing values included
    assert parity(model.predict(X), session.run(None, {"features": X})[0])["passed"]


def _edge_rows(model, X):
    "For every split: the median row with that feature on, one ulp below and one ulp above the threshold."
    base, rows = np.nanmedian(X, axis=0), []
    for tree in model.dump_model()["tree_info"]:
        for node in _splits(tree["tree_structure"]):
            for value in (node["threshold"], np.nextafter(node["threshold"], -np.inf), np.nextafter(node["threshold"], np.inf)):
                row = base.copy()
                row[node["split_feature"]] = value
                rows.append(row)
    return np.array(rows)


def _splits(node):
    if "split_index" not in node: return []
    return [node] + _splits(node["left_child"]) + _splits(node["right_child"])


def test_a_float32_path_would_have_failed_the_edge(booster):
    "The edge rows are a real test: rounded to float32 (what float converters feed the trees) some change their prediction."
    model, X = booster
    edge = _edge_rows(model, X)
    rounded = edge.astype(np.float32).astype(np.float64)
    assert np.abs(model.predict(edge) - model.predict(rounded)).max() > 1e-3


def test_xgboost_parity_and_perturbed_copies_fail(data):
    X, y = data
    model = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.1, "nthread": 1}, xgb.DMatrix(X, y), 50)
    onnx_model = xgboost_to_onnx(model)
    X32 = X.astype(np.float32)
    native = model.predict(xgb.DMatrix(X32))
    assert parity(native, onnx_session(onnx_model).run(None, {"features": X32})[0])["passed"]
    assert not parity(native, onnx_session(perturbed(onnx_model)).run(None, {"features": X32})[0])["passed"]


def test_every_exporter_fails_parity_when_perturbed(booster):
    model, X = booster
    tree = lightgbm_to_onnx(model)
    assert not parity(model.predict(X), onnx_session(perturbed(tree)).run(None, {"features": X})[0])["passed"]
    meta = {"inputs": ["a", "b", "c"], "coefficients": [0.5, 0.3, 0.2], "intercept": 0.05}
    p = np.random.default_rng(1).uniform(0.2, 0.8, size=(1000, 3))
    native = stacked_probability(meta, p)
    assert parity(native, onnx_session(stacking_to_onnx(meta)).run(None, {"p_base": p})[0])["passed"]
    assert not parity(native, onnx_session(perturbed(stacking_to_onnx(meta))).run(None, {"p_base": p})[0])["passed"]


@pytest.mark.parametrize("make", [lambda: MultiHorizonLSTM(8, 3, hidden=16),
                                  lambda: TemporalFusionTransformer(8, 3, length=24, hidden=16, n_heads=2)], ids=["lstm", "tft"])
def test_networks_export_with_a_dynamic_batch_and_stay_in_eval_mode(make):
    torch.manual_seed(0)
    network = make().eval()
    model, exporter = sequence_to_onnx(network, {"sequence_length": 24, "features": [f"f{i}" for i in range(8)]})
    assert exporter == "torch.onnx.export (TorchScript, dynamo=False)"
    assert not network.training   # the exporter restores the wrapper's mode; it must not switch dropout back on
    session = onnx_session(model)
    for batch in (1, 7, 300):
        windows = np.random.default_rng(batch).normal(size=(batch, 24, 8)).astype(np.float32)
        with torch.no_grad(): native = torch.sigmoid(network(torch.from_numpy(windows))).numpy()
        assert parity(native, session.run(None, {"windows": windows})[0])["passed"], batch
    assert not parity(native, onnx_session(perturbed(model)).run(None, {"windows": windows})[0])["passed"]


def test_the_stage_exports_a_run_and_records_it(tmp_path):
    config = profile_config("smoke", stacking_base_models=["lgb", "xgb", "lstm"])
    run_dir = example_run(tmp_path / "three_bases", "smoke", ["prepare", "lgb", "xgb", "lstm", "stacking"],
                          stacking_base_models=["lgb", "xgb", "lstm"])
    record = run_export(config, run_dir, "1h")
    assert set(record["exports"]) == {"lgb", "xgb", "lstm", "stacking_meta"}
    assert record["metrics"]["all_parity_passed"] and record["controls"]["perturbed_copies_fail"]
    for name, entry in record["exports"].items():
        assert sha256_file(run_dir / entry["file"]) == entry["sha256"] and entry["file"].endswith(f"{name}_1h.onnx")
        for batch in ("batch_1", "batch_256"):
            assert entry["latency_ms"][batch]["onnx"]["p50_ms"] > 0 and entry["latency_ms"][batch]["native"]["p50_ms"] > 0
    drift = json.loads((run_dir / "models" / "drift_reference_1h.json").read_text())   # the monitor's fixed bins
    assert "models/drift_reference_1h.json" in record["artifacts"]
    served = set(lgb.Booster(model_file=str(run_dir / "models" / "lgb_1h.txt")).feature_name())
    served |= set(json.loads((run_dir / "models" / "lstm_1h.json").read_text())["features"])
    assert set(drift["features"]) >= served
    held_out = pd.read_parquet(run_dir / "test" / "stacking_1h.parquet")   # the deployed stacked model's own predictions
    assert drift["prediction_rows"]["n_rows"] == len(held_out) == drift["prediction"]["n"]
    for bins in [drift["prediction"], *drift["features"].values()]:
        assert sum(bins["shares"]) + bins["missing_share"] == pytest.approx(1, abs=1e-12)
        assert len(bins["shares"]) == len(bins["edges"]) + 1 and np.all(np.diff(bins["edges"]) > 0)
        assert min(bins["shares"]) > 0 or bins["missing_share"] == 1   # every bin of the reference holds data
