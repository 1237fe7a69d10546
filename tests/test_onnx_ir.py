"""Every exporter writes files that older ONNX runtimes load: a newer `onnx` package stamps a newer IR version by
default (1.23: 14), and onnxruntime 1.30 on a GPU host refused the stacked model's file for it. Each exporter's model
carries at most `ONNX_IR_VERSION` (what onnxruntime 1.18, the oldest the project accepts, reads) and still runs."""
import lightgbm as lgb
import numpy as np
import onnx
import pytest
import xgboost as xgb

from macd_nb.core.served_model import ONNX_IR_VERSION, portable
from macd_nb.export.onnx import onnx_session
from macd_nb.models.fusion import fusion_to_onnx
from macd_nb.models.stacking import stacking_to_onnx
from macd_nb.models.lgb import lightgbm_to_onnx
from macd_nb.models.sequences import sequence_to_onnx
from macd_nb.models.xgb import xgboost_to_onnx
from macd_nb.models.lstm import MultiHorizonLSTM
from macd_nb.models.tft import TemporalFusionTransformer


def _trees():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)); y = (X[:, 0] + rng.normal(0, 1, 500) > 0).astype(float)
    return X, y


def _lightgbm():
    X, y = _trees()
    return lightgbm_to_onnx(lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4}, lgb.Dataset(X, y), 5)), X


def _xgboost():
    X, y = _trees()
    return xgboost_to_onnx(xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(X, y), 5)), X.astype(np.float32)


def _stacking():
    return stacking_to_onnx({"inputs": ["a", "b"], "coefficients": [0.7, 0.4], "intercept": -0.1}), np.full((3, 2), 0.6)


def _fusion():
    rng = np.random.default_rng(1)
    weights = {"mean": [0.0, 0.0], "scale": [1.0, 1.0],
               "layers": [{"weights": rng.normal(size=(2, 3)).tolist(), "bias": [0.0] * 3},
                          {"weights": rng.normal(size=(3, 1)).tolist(), "bias": [0.0]}]}
    return fusion_to_onnx(weights), np.full((3, 2), 0.55)


def _network(make):
    def build():
        model, _ = sequence_to_onnx(make().eval(), {"sequence_length": 24, "features": [f"f{i}" for i in range(8)]})
        return model, np.zeros((2, 24, 8), dtype=np.float32)
    return build


EXPORTERS = {"lightgbm": _lightgbm, "xgboost": _xgboost, "stacking": _stacking, "fusion": _fusion,
             "lstm": _network(lambda: MultiHorizonLSTM(8, 3, hidden=16)),
             "tft": _network(lambda: TemporalFusionTransformer(8, 3, length=24, hidden=16, n_heads=2))}


@pytest.mark.parametrize("name", list(EXPORTERS))
def test_every_exporter_writes_an_ir_version_old_runtimes_read_and_it_runs(name):
    model, rows = EXPORTERS[name]()
    assert model.ir_version <= ONNX_IR_VERSION, f"{name}: IR version {model.ir_version} > {ONNX_IR_VERSION}"
    reloaded = onnx.load_from_string(model.SerializeToString())   # as a file is read back
    assert reloaded.ir_version == model.ir_version
    p_up = onnx_session(reloaded).run(["p_up"], {reloaded.graph.input[0].name: rows})[0]
    assert np.isfinite(p_up).all() and ((p_up >= 0) & (p_up <= 1)).all()


def test_portable_lowers_a_newer_stamp_and_keeps_an_older_one():
    newer = stacking_to_onnx({"inputs": ["a"], "coefficients": [1.0], "intercept": 0.0})
    newer.ir_version = ONNX_IR_VERSION + 4   # as onnx 1.23 stamps its models
    assert portable(newer).ir_version == ONNX_IR_VERSION
    older = stacking_to_onnx({"inputs": ["a"], "coefficients": [1.0], "intercept": 0.0})
    older.ir_version = 8
    assert portable(older).ir_version == 8
