"""Stage 1.6, CatBoost, the third booster, added as a stage notebook and a registry row: its ONNX file agrees with
the native model on every real feature row (no decision flipped), it is a stacking input, and the served model built on
it is healthy and serves the stage's own predictions. Its walk-forward itself is checked with the others in test_gbm."""
import json

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.registry import promote
from macd_nb.core.rundir import RunPaths
from macd_nb.export.onnx import onnx_session, parity, perturbed, served_models
from macd_nb.models.catboost import run_catboost
from macd_nb.pipeline.examples import example_run
from macd_nb.serve import MLPredictor

from conftest import SHARED_DATA as SHARED, needs_shared_data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A smoke run (gates lowered) of LightGBM and CatBoost, stacked, exported and promoted to 1h."
    root = tmp_path_factory.mktemp("catboost")
    run_dir = example_run(root / "run_c", "smoke", ["prepare", "lgb", "catboost", "stacking", "export"],
                          run_id="lgb_catboost", stacking_base_models=["lgb", "catboost"], stacking_oof_auc=0.0,
                          stacking_min_oof={}, serve_window="validated")   # the refits that scored the test period ship
    promote(root / "registry", run_dir, "1h", why="test")
    return run_dir, root / "registry"


def test_it_is_a_stacking_input_and_its_export_passes_parity(served):
    run_dir, _ = served
    meta = json.loads((run_dir / "models" / "stacking_meta_1h.json").read_text())
    assert meta["inputs"] == ["lgb", "catboost"] and meta["deployable"]
    export = json.loads((run_dir / "results" / "export_1h.json").read_text())["exports"]["catboost"]
    assert export["parity"]["passed"] and export["parity"]["flips"] == 0 and export["perturbed_fails"]
    assert export["file"] == "models/catboost_1h.onnx" and export["source"] == "models/catboost_1h.cbm"


def test_the_served_model_is_healthy_and_serves_the_stages_own_predictions(served):
    run_dir, registry = served
    predictor = MLPredictor("1h", registry)
    report = predictor.health_check()
    assert report["status"] == "healthy", report["reasons"]
    assert set(report["models"]) == {"lgb", "catboost", "stacking_meta"}
    table, _ = load_table(run_dir, "1h")
    own = pd.read_parquet(run_dir / "test" / "catboost_1h.parquet")
    for bar in own.index[-3:]:
        assert predictor.predict(table.loc[:bar].iloc[-300:])["models"]["catboost"] == pytest.approx(own.loc[bar, "pred"], abs=1e-6)


@needs_shared_data
def test_onnx_parity_on_every_real_row_flips_no_decision(tmp_path):
    "CatBoost trained on real Binance klines (README's real smoke settings), exported through its family: every row."
    config = profile_config("smoke", data_source=str(SHARED), symbols=["BTCUSDT", "ETHUSDT"], start="2025-06-01",
                            end="2025-11-30", feature_inputs=[], timeframes=["1h"])
    run_dir = tmp_path / "real"
    prepare_run(config, run_dir)
    run_catboost(config, run_dir, "1h")
    family, loaded = served_models(RunPaths(run_dir), "1h")["catboost"]
    table, _ = load_table(run_dir, "1h")
    x = family.inputs(loaded, table, np.arange(len(table)))
    native, (model, _) = family.predict(loaded)(x), family.to_onnx(loaded)
    result = parity(native, onnx_session(model).run(None, {"features": x})[0])
    assert result["passed"] and result["flips"] == 0 and result["n"] == len(table) > 3000, result
    assert not parity(native, onnx_session(perturbed(model)).run(None, {"features": x})[0])["passed"]   # it can fail


def test_the_same_trees_are_saved_as_the_same_bytes(tmp_path):
    "CatBoost writes a random model id and its finish time into every model; the saved file, and so the manifest, the"
    " ONNX file and the package, must not change with them."
    from catboost import CatBoostClassifier
    from macd_nb.models.catboost import catboost_to_onnx, save_catboost_model
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + rng.normal(size=300) > 0).astype(int)
    saved = []
    for name in ("a", "b"):
        model = CatBoostClassifier(iterations=20, depth=3, random_seed=0, thread_count=1, verbose=0,
                                   allow_writing_files=False).fit(X, y)
        saved.append(save_catboost_model(model, tmp_path / f"{name}.cbm").read_bytes())
        saved.append(catboost_to_onnx(CatBoostClassifier().load_model(str(tmp_path / f"{name}.cbm"))).SerializeToString())
    assert saved[0] == saved[2] and saved[1] == saved[3]
