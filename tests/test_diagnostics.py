"Base-model diagnostics: prediction spread and correlation of out-of-fold predictions, on the rows every model scored."
import numpy as np
import pandas as pd
import pytest

from macd_nb.models.diagnostics import base_diagnostics, load_oof, run_diagnostics


def _write_oof(run_dir, name, index, y, pred):
    (run_dir / "oof").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"y": y, "pred": pred}, index=index).to_parquet(run_dir / "oof" / f"{name}_1h.parquet")


def test_correlation_and_spread_on_common_rows(tmp_path):
    rng = np.random.default_rng(0)
    index = pd.date_range("2024-01-01", periods=500, freq="1h", tz="UTC", name="open_time")
    y = (rng.random(500) < 0.5).astype(float)
    signal = rng.normal(size=500)
    _write_oof(tmp_path, "a", index, y, 0.5 + 0.01 * signal)
    _write_oof(tmp_path, "b", index[100:], y[100:], 0.5 + 0.02 * signal[100:])          # same ranking, twice the spread
    _write_oof(tmp_path, "c", index, y, 0.5 + 0.01 * rng.normal(size=500))               # unrelated
    oof = load_oof(tmp_path, "1h")
    assert len(oof) == 400 and oof.index[0] == index[100]                               # only rows all models scored
    record = run_diagnostics(tmp_path, "1h")
    assert record["pearson"]["a"]["b"] == pytest.approx(1.0)
    assert abs(record["pearson"]["a"]["c"]) < 0.2
    assert record["models"]["b"]["pred_std"] == pytest.approx(2 * record["models"]["a"]["pred_std"])
    assert (tmp_path / "results" / "diagnostics_1h.json").exists() and record["stage"] == "1.7"


def test_no_predictions_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no out-of-fold predictions for 1h"):
        load_oof(tmp_path, "1h")


def test_models_whose_labels_disagree_are_refused(tmp_path):
    "Predictions of models trained on different prepared data must not be lined up."
    index = pd.date_range("2024-01-01", periods=50, freq="1h", tz="UTC", name="open_time")
    y = np.tile([0.0, 1.0], 25)
    _write_oof(tmp_path, "a", index, y, np.linspace(0, 1, 50))
    _write_oof(tmp_path, "b", index, 1 - y, np.linspace(0, 1, 50))
    with pytest.raises(ValueError, match=r"b_1h.parquet: labels disagree .* at 50 bars, first 2024-01-01 00:00:00\+00:00"):
        load_oof(tmp_path, "1h")
