"""Neural base models (stages 1.2 LSTM and 1.3 TFT): signal found out of fold, controls hold, no look-ahead, artifacts reload.

Runs on two years of the quick profile's synthetic market, half-year windows, with smaller networks, 2 refits and few epochs
so that the whole file stays around a minute on two CPU cores.
"""
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from macd_nb.core.config import profile_config
from macd_nb.models.lstm import LSTM, MultiHorizonLSTM, run_lstm
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.rundir import RunPaths
from macd_nb.models.sequence_stage import SequenceData, fit_refit
from macd_nb.models.sequences import Standardizer, TrainSettings, gather_windows, predict_table, sequence_features
from macd_nb.models.tft import TFT, TemporalFusionTransformer, run_tft
from macd_nb.core.validation import WalkForward, as_utc_datetime64, holdout_split


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    "Prepared quick-profile data and a config sized for tests."
    run_dir = tmp_path_factory.mktemp("nn_run")
    # two years, half-year windows: since the quick profile grew to four years (for its stacking gates) this file had
    # silently doubled, to 68 s from 42 s on an idle 2-core machine, with nothing more checked
    config = profile_config("quick", n_bars=24 * 365 * 2, train_bars=24 * 180, nn_refits=2, nn_epochs=6, tft_epochs=3,
                            nn_sequence_length=16, nn_hidden=16,
                            nn_max_features=16, bootstrap_samples=200, threads_per_job=1)
    prepare_run(config, run_dir)
    return config, run_dir


@pytest.fixture(scope="module")
def lstm_result(quick_run):
    config, run_dir = quick_run
    return run_lstm(config, run_dir)


@pytest.fixture(scope="module")
def tft_result(quick_run):
    config, run_dir = quick_run
    return run_tft(config, run_dir)


@pytest.mark.parametrize("which", ["lstm_result", "tft_result"])
def test_finds_signal_and_controls_hold(which, request):
    result = request.getfixturevalue(which)
    record, metrics, controls = result.record, result.metrics, result.controls
    assert metrics["oof_auc_ci95"][0] > 0.5, metrics
    assert abs(controls["shuffled_label_auc"] - 0.5) <= 0.02, controls
    assert controls["planted_leak_flagged"]
    assert metrics["n_folds"] == 2 and len(record["refits"]) == 2
    assert record["dtype"] in ("fp32", "bf16") and record["timings_s"]["seconds_per_epoch"] > 0


def test_oof_rows_are_the_gbm_oof_rows(quick_run, lstm_result, tft_result):
    "The coarse refits score exactly the rows the fine (GBM) walk-forward scores, so stacking can line them up."
    config, run_dir = quick_run
    table, _ = load_table(run_dir, "1h")
    dev_idx, _ = holdout_split(len(table), config.validation.test_fraction, gap=config.validation.purge_bars + config.validation.embargo_bars)
    folds = WalkForward(config.validation.n_folds, train_size=config.validation.train_bars, purge=config.validation.purge_bars,
                        embargo=config.validation.embargo_bars).folds(len(dev_idx), label_end=table["label_end_1"].to_numpy()[dev_idx],
                                                           times=table.index.to_numpy()[dev_idx])
    val_rows = np.concatenate([f.val_idx for f in folds])
    expected = table.index[val_rows][np.isfinite(table["y_1"].to_numpy()[val_rows])]
    for name in ("lstm", "tft"):
        oof = pd.read_parquet(run_dir / "oof" / f"{name}_1h.parquet")
        assert list(oof.columns) == ["y", "pred", "fold", "train_label_end"] and oof.index.equals(expected)


def test_multi_horizon_heads_and_best_head(quick_run, lstm_result):
    config, run_dir = quick_run
    saved = LSTM.load(RunPaths(run_dir), "lstm", "1h")
    model, meta = saved.model, saved.meta
    assert meta["horizons"] == config.validation.horizons and meta["best_head"] in config.validation.horizons
    assert lstm_result.record["best_head"] == meta["best_head"]
    assert set(lstm_result.metrics["inner_val_auc_per_head"]) == {str(h) for h in config.validation.horizons}
    table, _ = load_table(run_dir, "1h")
    probs = predict_table(model, meta, table, np.arange(len(table) - 300, len(table)))
    assert probs.shape == (300, len(config.validation.horizons))
    assert np.all((probs > 0) & (probs < 1)) and np.all(probs.std(axis=0) > 0)


@pytest.mark.parametrize("name", ["lstm", "tft"])
def test_artifacts_reload_weights_only_and_reproduce(quick_run, lstm_result, tft_result, name):
    config, run_dir = quick_run
    record = lstm_result if name == "lstm" else tft_result
    saved = (LSTM if name == "lstm" else TFT).load(RunPaths(run_dir), name, "1h")
    model, meta = saved.model, saved.meta
    state = torch.load(run_dir / "models" / f"{name}_1h.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    table, _ = load_table(run_dir, "1h")
    again = predict_table(model, meta, table, record.extras["test_rows"])[:, meta["main_head_index"]]
    np.testing.assert_allclose(again, record.extras["served_test_pred"], atol=1e-5)   # the file is the shipped model
    # no rows asked: no row, but every head (a caller indexes a head without a special case)
    assert predict_table(model, meta, table, [])[:, meta["main_head_index"]].shape == (0,)
    # shipped: the window ending at the newest labelled bar; the test period was scored by the validated refit
    newest_labelled = table.index[table[f"y_{config.validation.label_horizon}"].notna()][-1]
    assert pd.Timestamp(meta["training_window"]["last_bar"]) == newest_labelled
    assert meta["validated_fold"]["labels_end"] <= record.record["window"]["test_start"]
    assert record.record["deployment"]["last_bar"] == meta["training_window"]["last_bar"]


def test_scaler_sees_training_rows_only(quick_run):
    "Changing every value after the training window leaves the saved scaler unchanged; changing one inside moves it."
    config, run_dir = quick_run
    table, summary = load_table(run_dir, "1h")
    names = sequence_features(summary, 8)
    data = SequenceData.from_table(table, names, [1], 1)
    train_rows, score_rows, length = np.arange(0, 1500), np.arange(1600, 1700), 12
    settings = TrainSettings(epochs=1, batch_size=512)
    refit = lambda d: fit_refit(lambda: MultiHorizonLSTM(len(names), 1, hidden=4), d, train_rows, d.times[1600], score_rows,
                                length=length, inner_fraction=0.15, purge=24, settings=settings)
    base = refit(data)
    after = data.features.copy(); after[1500:] = 1e6
    inside = data.features.copy(); inside[1400] = 1e6
    changed_after = refit(SequenceData(**{**data.__dict__, "features": after}))
    changed_inside = refit(SequenceData(**{**data.__dict__, "features": inside}))
    np.testing.assert_array_equal(changed_after["scaler"].mean, base["scaler"].mean)
    np.testing.assert_array_equal(changed_after["scaler"].std, base["scaler"].std)
    assert not np.allclose(changed_inside["scaler"].mean, base["scaler"].mean)


@pytest.mark.parametrize("model", [MultiHorizonLSTM(6, 4, hidden=8),
                                   TemporalFusionTransformer(6, 1, length=10, hidden=8, n_heads=2)])
def test_window_and_prediction_at_t_use_no_later_bar(model):
    "The window ending at bar t, and a model's output for it, are unchanged when every bar after t changes."
    features = torch.randn(60, 6)
    tampered = features.clone(); tampered[31:] = torch.randn(29, 6) * 100
    rows = np.array([9, 20, 30])
    assert torch.equal(gather_windows(features, rows, 10), gather_windows(tampered, rows, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(gather_windows(features, rows, 10)), model(gather_windows(tampered, rows, 10)))
    with pytest.raises(ValueError, match="no full window"):
        gather_windows(features, [8], 10)


def test_standardizer_round_trip():
    values = np.random.default_rng(0).normal(5, 3, size=(200, 3))
    scaler = Standardizer.fit(values, np.arange(100))
    again = Standardizer.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(values), scaler.transform(values))


def test_tft_traces_and_exports(tmp_path):
    model = TemporalFusionTransformer(5, 1, length=12, hidden=8, n_heads=2).eval()
    example = torch.randn(3, 12, 5)
    traced = torch.jit.trace(model, example)
    torch.testing.assert_close(traced(torch.randn(7, 12, 5) * 0 + example[:1]), model(example[:1]).expand(7, 1))
    if not (importlib.util.find_spec("onnxscript") and importlib.util.find_spec("onnxruntime")):
        pytest.skip("onnxscript/onnxruntime not installed: traced only")
    import onnxruntime
    path = tmp_path / "tft.onnx"
    torch.onnx.export(model, (example,), str(path), input_names=["windows"], output_names=["logits"],
                      dynamic_axes={"windows": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(9, 12, 5)
    np.testing.assert_allclose(session.run(None, {"windows": batch.numpy()})[0], model(batch).detach().numpy(), atol=1e-4)
