"""Stage 2.2, multi-timeframe fusion: a 4h prediction is used only once its bar has closed, the MLP never trains on
the block it scores, its JSON weights are the fitted model, its ONNX file passes parity, and a 1h-only run skips it."""
import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.prepare import prepare_run
from macd_nb.core.rundir import read_json
from macd_nb.export.onnx import run_export
from macd_nb.models.fusion import align_slow, run_fusion
from macd_nb.pipeline.examples import example_run


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    config = profile_config("smoke", timeframes=["1h", "4h"], n_bars=24 * 365)
    run_dir = example_run(tmp_path_factory.mktemp("fusion") / "two_timeframes", "smoke", ["prepare", "lgb"],
                          timeframes=["1h", "4h"], n_bars=24 * 365)
    return config, run_dir, run_fusion(config, run_dir)


def test_a_slow_prediction_is_used_only_after_its_bar_closed():
    fast = pd.DataFrame({"p_fast": np.arange(48.0)}, index=pd.date_range("2024-01-01", periods=48, freq="1h", tz="UTC", name="open_time"))
    slow = pd.Series(np.arange(12.0), index=pd.date_range("2024-01-01", periods=12, freq="4h", tz="UTC"))
    aligned = align_slow(fast, slow, "1h", "4h")
    assert (aligned["slow_bar"] + pd.Timedelta(hours=4) <= aligned.index + pd.Timedelta(hours=1)).all()
    # and it is the latest such bar: one 1h bar earlier it would not yet have been known
    later = aligned["slow_bar"] + pd.Timedelta(hours=4)
    assert ((later > aligned.index) | (aligned["slow_bar"] == aligned["slow_bar"].max())).any()
    assert aligned.loc["2024-01-01 07:00", "p_slow"].item() == 1.0 and aligned.loc["2024-01-01 06:00", "p_slow"].item() == 0.0


def test_fusion_walks_forward_and_saves_the_fitted_model(fused):
    config, run_dir, record = fused
    assert "skipped" not in record and record["metrics"]["inputs"] == {"1h": "lgb", "4h": "lgb"}
    for block in record["blocks"]:
        assert block["last_train_row"] < block["first_scored_row"]
        assert pd.Timestamp(block["last_train_label_end"]) < pd.Timestamp(block["start"])
    assert abs(record["controls"]["shuffled_label_auc"] - 0.5) < 0.06
    weights = read_json(run_dir / "models" / "mtf_fusion_mlp_1h.json")
    assert weights["inputs"] == ["p_1h", "p_4h"] and len(weights["layers"]) == 2


def test_the_fusion_onnx_passes_parity(fused):
    config, run_dir, _ = fused
    record = run_export(config, run_dir, "1h")
    fusion = record["exports"]["mtf_fusion_mlp"]
    assert fusion["parity"]["passed"] and fusion["perturbed_fails"] and fusion["parity"]["n"] > 1000


def test_a_run_without_4h_skips_fusion_with_its_reason(tmp_path):
    config = profile_config("smoke")
    prepare_run(config, tmp_path)
    record = run_fusion(config, tmp_path)
    assert "fusion needs 1h and 4h" in record["skipped"]
