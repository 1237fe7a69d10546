"""The monitor: PSI and ECE equal their hand computations, drift is measured against the exported reference bins (low
for rows from the training distribution, major and named in the recommendation when shifted), realised AUC matches the
known relationship of predictions to outcomes, a retrain is recommended only when a limit is crossed, the CLI function
writes the report and its plots, and an empty log, a log without outcomes and a single class each say why."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.registry import promote
from macd_nb.core.rundir import write_json, write_manifest
from macd_nb.core.served_model import bin_shares, reference_bins
from macd_nb.core.validation import auc
from macd_nb.serve.log import PredictionLog
from macd_nb.serve.monitor import LIMITS, calibration, monitor_command, monitor_report, monitor_summary, psi

FEATURES = ("ret_1", "rsi_14", "vol_24", "flag")
OOF = {"oof_auc": 0.58, "oof_auc_ci95": [0.56, 0.60], "test_auc": 0.57, "test_auc_ci95": [0.54, 0.60]}
FAST = {"n_boot": 200}   # bootstrap resamples in these tests


def _draw(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    "Feature rows of the synthetic training distribution, `shift` standard deviations away (the binary flag never moves)."
    frame = pd.DataFrame({"ret_1": rng.normal(shift, 1, n), "rsi_14": rng.uniform(0, 100, n) + 30 * shift,
                          "vol_24": rng.lognormal(shift, 0.5, n), "flag": (rng.uniform(size=n) < 0.3).astype(float)})
    frame.loc[rng.uniform(size=n) < 0.05, "vol_24"] = np.nan   # a feature with gaps: its NaN share is a bin of its own
    return frame


def _predictions(rng, n: int) -> np.ndarray:
    "The stacked model's P(up): what outcomes are drawn from (so its realised AUC is known)."
    return np.clip(0.5 + 0.15 * rng.standard_normal(n), 0.02, 0.98)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    "A promoted run holding only what the monitor reads: the stacked model's meta, its stacking record, the drift reference."
    root = tmp_path_factory.mktemp("monitor")
    rng = np.random.default_rng(1)
    run = root / "run_m"
    train = _draw(rng, 20_000).set_axis(pd.date_range("2022-01-01", periods=20_000, freq="1h", tz="UTC"))
    window = {"first_bar": str(train.index[0]), "last_bar": str(train.index[-1]), "n_rows": len(train)}
    write_json(run / "models" / "stacking_meta_1h.json", {
        "inputs": ["lgb", "xgb"], "deployable": True, "training_window": window,
        "base_models": [{"model": m, "files": [], "training_window": window} for m in ("lgb", "xgb")]})
    write_json(run / "results" / "stacking_1h.json", {"metrics": OOF})
    write_json(run / "models" / "drift_reference_1h.json", {
        "features": {c: reference_bins(train[c].to_numpy()) for c in train}, "feature_rows": window,
        "prediction": reference_bins(_predictions(rng, 20_000))})
    (run / "config.json").write_text("{}")
    write_manifest(run)
    promote(root / "registry", run, "1h", why="test")
    return root / "registry"


def _fill(path: Path, rng, n: int, *, shift: float = 0.0, p: np.ndarray | None = None, outcome=None, start="2025-01-01",
          run: str = "run_m", fallback_every: int = 40) -> pd.DataFrame:
    "Log `n` hourly predictions of BTCUSDT (outcomes drawn from P(up) unless given); the rows' truth as a frame."
    p = _predictions(rng, n) if p is None else p
    outcome = (rng.uniform(size=n) < p).astype(int) if outcome is None else np.asarray(outcome)
    features = _draw(rng, n, shift).set_axis(pd.date_range(start, periods=n, freq="1h", tz="UTC"))
    lgb = np.clip(p + 0.25 * rng.standard_normal(n), 0.01, 0.99)   # a noisier copy: ranks worse than the stacked model
    log = PredictionLog(path)
    log.db.execute("BEGIN")
    for k, (bar, row) in enumerate(features.iterrows()):
        log.record(symbol="BTCUSDT", timeframe="1h", bar_time=bar, alias="1h", model_version=1, run=run, p_up=p[k],
                   models={"stacking": p[k], "lgb": lgb[k], "xgb": 0.5 + 0.1 * (rng.uniform() - 0.5)},
                   fallback="lstm: fewer bars than its window" if k % fallback_every == 0 else None,
                   latency_ms=2.0 + k % 10, features=row, horizon=1)
    log.db.executemany("UPDATE predictions SET outcome=? WHERE bar_time=? AND run=?",
                       [(None if o < 0 else int(o), bar.isoformat(), run) for bar, o in zip(features.index, outcome)])
    log.db.execute("COMMIT")
    log.close()
    return features.assign(p=p, outcome=outcome)


def _summary(registry: Path, db: Path, out: Path, **limits) -> dict:
    monitor_report(db, registry, "1h", out, **(FAST | limits))
    return json.loads((out / "monitor.json").read_text())


def test_psi_is_the_hand_computation():
    rng = np.random.default_rng(0)
    reference = reference_bins(rng.normal(size=1000))
    assert len(reference["edges"]) == 9 and reference["shares"] == pytest.approx([0.1] * 10)
    live_values = np.r_[rng.normal(0.5, 1, 900), [np.nan] * 100]
    live = bin_shares(live_values, reference["edges"])
    edges = np.r_[-np.inf, reference["edges"], np.inf]   # right-closed bins, counted one by one
    counts = [np.sum((live_values > lo) & (live_values <= hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    expected_live = np.maximum(np.r_[counts, 100] / 1000, 1e-4)
    expected_ref = np.maximum(np.r_[reference["shares"], 0.0], 1e-4)
    by_hand = sum((l - r) * np.log(l / r) for l, r in zip(expected_live, expected_ref))
    assert live["shares"] == pytest.approx(np.array(counts) / 1000) and live["missing_share"] == 0.1
    assert psi(reference, live) == pytest.approx(by_hand, rel=1e-12) and by_hand > 0.25   # the NaN bin alone adds 0.69
    assert psi(reference, bin_shares(rng.normal(size=5000), reference["edges"])) < 0.01


def test_reference_bins_of_constant_and_binary_features():
    constant = reference_bins(np.r_[np.full(99, 3.0), np.nan])
    assert constant["edges"] == [] and constant["shares"] == [0.99] and constant["missing_share"] == 0.01
    no_gaps = (1 - 0.99) * np.log(1 / 0.99) + (1e-4 - 0.01) * np.log(1e-4 / 0.01)   # the missing bin empties: floored
    assert psi(constant, bin_shares(np.full(10, 3.0), [])) == pytest.approx(no_gaps, rel=1e-12)
    binary = reference_bins(np.r_[np.zeros(80), np.ones(20)])
    assert binary["edges"] == [0.0] and binary["shares"] == [0.8, 0.2]


def test_ece_is_the_hand_computation():
    p = np.array([0.30, 0.35, 0.40, 0.45, 0.55, 0.60, 0.62, 0.70, 0.80, 0.90])
    y = np.array([0, 1, 0, 0, 1, 0, 1, 1, 1, 1])
    result = calibration(y, p, n_bins=5)   # pairs of neighbours
    pairs = [(p[k:k + 2].mean(), y[k:k + 2].mean()) for k in range(0, 10, 2)]
    assert np.allclose([(b["mean_p"], b["up_rate"]) for b in result["bins"]], pairs, rtol=0, atol=1e-12)
    assert result["ece"] == pytest.approx(sum(2 * abs(rate - mean) for mean, rate in pairs) / 10)


def test_rows_from_the_training_distribution_are_stable_and_auc_is_the_expected_one(registry, tmp_path):
    rng = np.random.default_rng(2)
    truth = _fill(tmp_path / "log.sqlite", rng, 3000)
    summary = _summary(registry, tmp_path / "log.sqlite", tmp_path / "out")
    drift = summary["drift"]
    assert max(drift["features"].values()) < 0.1 and drift["prediction"] < 0.1, drift
    assert summary["retrain"] == []
    big = np.random.default_rng(3)
    p = _predictions(big, 400_000)
    expected = auc((big.uniform(size=len(p)) < p).astype(int), p)   # the population AUC of this process, about 0.63
    realised = summary["auc"]
    assert realised["n_bars"] == 3000 and realised["auc"] == pytest.approx(auc(truth["outcome"], truth["p"]), abs=1e-12)
    assert abs(realised["auc"] - expected) < 0.03 and realised["auc_ci95"][0] < expected < realised["auc_ci95"][1]
    assert realised["oof_auc"] == OOF["oof_auc"] and realised["oof_auc_ci95"] == OOF["oof_auc_ci95"]
    models = summary["models"]["models"]
    assert models["stacking"]["auc"] > models["lgb"]["auc"] > models["xgb"]["auc"] - 0.05
    assert models["lgb"]["stacking_minus_this"]["ci95"][0] > 0   # paired: the noisier copy is clearly worse
    assert summary["operations"]["fallbacks"] == {"lstm: fewer bars than its window": 75}
    assert summary["calibration"]["ece"] < 0.05


def test_shifted_features_recommend_a_retrain_naming_psi(registry, tmp_path):
    rng = np.random.default_rng(4)
    _fill(tmp_path / "log.sqlite", rng, 800, shift=1.0)
    summary = _summary(registry, tmp_path / "log.sqlite", tmp_path / "out")
    drift = summary["drift"]
    assert {f for f, v in drift["features"].items() if v > 0.25} == {"ret_1", "rsi_14", "vol_24"}
    assert drift["features"]["flag"] < 0.1 and drift["prediction"] < 0.1   # the prediction did not move
    assert len(summary["retrain"]) == 1 and summary["retrain"][0].startswith("PSI > 0.25 on 3 of 4 features (75% > 10%)")
    report = (tmp_path / "out" / "MONITOR.md").read_text()
    assert "**Retrain recommended.**" in report and "PSI > 0.25 on 3 of 4 features" in report
    assert list(drift["features"]) == sorted(drift["features"], key=lambda f: -drift["features"][f])   # sorted by PSI
    relaxed = _summary(registry, tmp_path / "log.sqlite", tmp_path / "relaxed", max_major_features=0.8)
    assert relaxed["retrain"] == [] and "No retrain recommended" in (tmp_path / "relaxed" / "MONITOR.md").read_text()
    few = _summary(registry, tmp_path / "log.sqlite", tmp_path / "few", min_drift_rows=801)   # too few rows to act on
    assert few["retrain"] == [] and few["drift"]["features"] == drift["features"]


def test_a_shifted_prediction_is_named(registry, tmp_path):
    rng = np.random.default_rng(5)
    p = np.clip(_predictions(rng, 800) + 0.2, 0.02, 0.98)
    _fill(tmp_path / "log.sqlite", rng, 800, p=p)
    summary = _summary(registry, tmp_path / "log.sqlite", tmp_path / "out")
    assert summary["drift"]["prediction"] > 0.25
    assert len(summary["retrain"]) == 1 and summary["retrain"][0].startswith(
        f"PSI of the prediction {summary['drift']['prediction']:.3f} > 0.25 (800 rows)"), summary["retrain"]


def test_realised_auc_limits(registry, tmp_path):
    rng = np.random.default_rng(6)
    p = _predictions(rng, 600)
    _fill(tmp_path / "wrong.sqlite", rng, 600, p=p, outcome=(rng.uniform(size=600) > p).astype(int))   # inverted
    wrong = _summary(registry, tmp_path / "wrong.sqlite", tmp_path / "wrong")
    assert wrong["auc"]["auc_ci95"][1] < 0.5
    assert any("the whole interval is below 0.5" in t for t in wrong["retrain"])
    assert any("below the OOF AUC's 95% CI lower bound 0.560" in t for t in wrong["retrain"])
    fewer = _summary(registry, tmp_path / "wrong.sqlite", tmp_path / "fewer", min_ci_bars=601, min_auc_bars=601)
    assert fewer["retrain"] == [] and fewer["auc"]["auc"] == wrong["auc"]["auc"]
    _fill(tmp_path / "noise.sqlite", rng, 600, p=p, outcome=(rng.uniform(size=600) < 0.5).astype(int))   # no skill
    noise = _summary(registry, tmp_path / "noise.sqlite", tmp_path / "noise")
    assert noise["auc"]["auc_ci95"][0] < 0.5 < noise["auc"]["auc_ci95"][1] and noise["auc"]["auc"] < 0.56
    assert [t.split(" on ")[0] for t in noise["retrain"]] == [f"realised AUC {noise['auc']['auc']:.3f}"], noise["retrain"]


def test_the_cli_function_writes_the_report_and_its_plots(registry, tmp_path, capsys):
    rng = np.random.default_rng(7)
    _fill(tmp_path / "log.sqlite", rng, 300)
    _fill(tmp_path / "log.sqlite", rng, 50, run="run_old", start="2024-12-01")   # another run's rows: left out
    args = Namespace(db=str(tmp_path / "log.sqlite"), registry=str(registry), alias="1h", out=None)
    assert monitor_command(args) == 0
    out = tmp_path / "monitor"
    assert capsys.readouterr().out.strip() == f"monitor: {out / 'MONITOR.md'}"
    report = (out / "MONITOR.md").read_text()
    for heading in ("## Retrain recommendation", "## Realised AUC", "## Calibration", "## Stacked model against each base model",
                    "## Drift (PSI against the training window)", "## Latency and fallbacks"):
        assert heading in report, heading
    assert "300 bars predicted by this run (50 rows of other runs left out)" in report and "Model age" in report
    for name in ("reliability.png", "psi.png", "latency.png"):
        assert f"]({name})" in report and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    lat = json.loads((out / "monitor.json").read_text())["operations"]["latency_ms"]
    assert (lat["p50"], lat["max"]) == (6.5, 11.0)   # 2..11 ms, evenly
    missing = Namespace(db=str(tmp_path / "nothing.sqlite"), registry=str(registry), alias="1h", out=str(tmp_path / "x"))
    assert monitor_command(missing) == 2 and "nothing.sqlite: no prediction log there" in capsys.readouterr().err
    assert not (tmp_path / "nothing.sqlite").exists()
    no_alias = Namespace(db=str(tmp_path / "log.sqlite"), registry=str(tmp_path / "empty_registry"), alias="4h", out=None)
    assert monitor_command(no_alias) == 2 and "no alias '4h'" in capsys.readouterr().err


def test_an_empty_log_no_outcomes_and_one_class_say_why(registry, tmp_path):
    PredictionLog(tmp_path / "empty.sqlite").close()
    report = monitor_report(tmp_path / "empty.sqlite", registry, "1h", tmp_path / "empty", **FAST).read_text()
    for line in ("No realised AUC: the log holds no prediction of this run.", "No calibration: the log holds no prediction",
                 "No drift measured: the log holds no prediction", "Nothing to measure: the log is empty.", "No retrain recommended"):
        assert line in report, line
    assert not list((tmp_path / "empty").glob("*.png"))
    rng = np.random.default_rng(8)
    _fill(tmp_path / "pending.sqlite", rng, 200, outcome=np.full(200, -1))   # outcomes not filled yet
    pending = _summary(registry, tmp_path / "pending.sqlite", tmp_path / "pending")
    assert pending["auc"]["empty"] == "none of the 200 logged bars has an outcome yet (filled once its horizon has closed)"
    assert "features" in pending["drift"] and pending["operations"]["n_rows"] == 200   # drift needs no outcome
    assert not (tmp_path / "pending" / "reliability.png").exists() and (tmp_path / "pending" / "psi.png").exists()
    _fill(tmp_path / "up.sqlite", rng, 200, outcome=np.ones(200))
    up = _summary(registry, tmp_path / "up.sqlite", tmp_path / "up")
    assert up["auc"]["empty"] == "all 200 bars with an outcome went up: an AUC needs both classes" and "auc" not in up["auc"]
    assert "ece" in up["calibration"] and "needs both classes" in up["models"]["empty"]


def test_limits_are_checked_and_the_summary_needs_no_files():
    with pytest.raises(TypeError, match=r"unknown limits \['psi_limit'\]"):
        monitor_summary(pd.DataFrame(), None, {}, {}, psi_limit=0.2)
    assert set(LIMITS) == {"psi_major", "max_major_features", "min_drift_rows", "min_ci_bars", "min_auc_bars", "block",
                           "n_boot", "seed"}


def test_a_real_exported_run_is_monitored_against_its_own_reference(tmp_path, deployable_run):
    "The shared deployable smoke run (LightGBM, XGBoost, the LSTM, stacked, exported) promoted: rows of its training"
    " window logged as served."
    from macd_nb.core.prepare import load_table
    from macd_nb.serve import MLPredictor
    # the shipped models are the validated refits, whose held-out predictions are the reference: served again, they
    # must reproduce it (with `serve_window: newest` the test bars are inside the shipped models' window)
    run_dir, registry = deployable_run(tmp_path / "run_r"), tmp_path / "registry"
    promote(registry, run_dir, "1h", why="test")
    predictor = MLPredictor("1h", registry)
    reference = json.loads((predictor.run_root / "models" / "drift_reference_1h.json").read_text())
    table, _ = load_table(run_dir, "1h")
    window = table.loc[reference["feature_rows"]["first_bar"]:reference["feature_rows"]["last_bar"]]
    assert len(window) == reference["feature_rows"]["n_rows"]
    rng, rows = np.random.default_rng(9), predictor.feature_rows()   # a prediction reads `rows` bars (the LSTM's window)
    def logged(name: str, bars) -> dict:
        log = PredictionLog(tmp_path / f"{name}.sqlite")
        for bar in bars:
            out = predictor.predict(table.loc[:bar].iloc[-rows:])
            log.record(symbol="BTCUSDT", timeframe="1h", bar_time=bar, alias="1h", model_version=1, run="run_r",
                       p_up=out["p_up"], models=out["models"] | {"stacking": out["p_up"]}, fallback=None, latency_ms=1.0,
                       features=table.loc[bar, list(reference["features"])], horizon=1)
        log.close()
        return _summary(registry, tmp_path / f"{name}.sqlite", tmp_path / name)
    servable = window.index[window.index >= table.index[rows - 1]]
    train = logged("train", np.sort(rng.choice(servable, size=400, replace=False)))   # a random sample of the training rows
    drift = train["drift"]
    assert set(drift["features"]) == set(reference["features"]) and drift["not_logged"] == []
    assert np.median(list(drift["features"].values())) < 0.05 and max(drift["features"].values()) < 0.25, drift["features"]
    base_ends = [pd.Timestamp(b["training_window"]["last_bar"]) for b in predictor.meta["base_models"]]
    assert train["age"]["training_window_end"] == str(min(base_ends))   # the stalest served model's newest bar
    held_out = pd.read_parquet(run_dir / "test" / "stacking_1h.parquet")["pred"]   # the stage's own deployed-model predictions
    test = logged("test", held_out.index)                                       # served again through the registry
    # the reference's own rows served again (ONNX within 1e-6 of the stage): a value on a bin edge may change sides
    assert psi(reference["prediction"], bin_shares(held_out.to_numpy(), reference["prediction"]["edges"])) == pytest.approx(0, abs=1e-9)
    assert test["drift"]["prediction"] < 0.01 and test["drift"]["n_prediction"] == len(held_out)
