"""Benchmark: shadow mode's latency per bar on one core (features + every model + the meta-learner), replaying the
last 30 days of the shared real klines (all 17 symbols, BTCUSDT the target) through a smoke-trained run's package,
deployed.

The parts, on the last 48 bars, in the same process: the streaming features (`StreamingFeatures.catch_up`, what
shadow mode uses: the new hour taken from the market's frames and one row computed from carried state), and two
baselines that give the same features within 1e-9: `live_rows` (the batch code over the bounded window
`live_window` derives) and the batch code over the whole history (what a naive live path does).

    python benchmarks/bench_shadow.py [--days 30] [--monitor DIR]

Writes benchmarks/results/shadow.json (and, with --monitor, the monitor report of the replayed log).
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ[name] = "1"
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})          # one core

import numpy as np
import pandas as pd

from macd_nb.core.config import library_versions, profile_config
from macd_nb.core.data import load_bars
from macd_nb.core.prepare import features_at, prepare_run
from macd_nb.core.rundir import write_manifest
from macd_nb.export.onnx import run_export
from macd_nb.export.package import build_package, deploy
from macd_nb.models.lgb import run_lgb
from macd_nb.models.lstm import run_lstm
from macd_nb.models.stacking import run_stacking
from macd_nb.models.xgb import run_xgb
from macd_nb.serve.live import live_rows, live_window
from macd_nb.serve.log import PredictionLog
from macd_nb.serve.shadow import Served, replay_source, shadow
from macd_nb.serve.stream import StreamingFeatures

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MACD_NB_SHARED_DATA") or REPO.parent / "shared" / "data" / "binance_spot_1h")


def deploy_smoke(root: Path) -> Path:
    "A smoke run of LightGBM, XGBoost and the LSTM, stacked, exported, packaged and deployed to a registry (alias 1h)."
    config = profile_config("smoke", stacking_base_models=["lgb", "xgb", "lstm"], stacking_oof_auc=0.0, stacking_min_oof={},
                            feature_inputs=[], symbols=profile_config("full").data.symbols)
    run_dir = root / "run_smoke"
    prepare_run(config, run_dir)
    run_lgb(config, run_dir), run_xgb(config, run_dir), run_lstm(config, run_dir)
    run_stacking(config, run_dir), run_export(config, run_dir)
    write_manifest(run_dir)
    deploy(build_package(run_dir, root / "package"), root / "registry", why="benchmark")
    return root / "registry"


def percentiles(ms) -> dict:
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {"max": round(float(np.max(ms)), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--monitor", type=Path, default=None, help="write the monitor report of the replayed log here")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shadow.json")
    args = parser.parse_args(argv)
    if not SHARED.exists(): raise SystemExit(f"shared real data not found at {SHARED} (set MACD_NB_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        registry = deploy_smoke(root)
        trained = time.perf_counter() - started
        served = Served.load("1h", registry)
        symbols = [served.config.data.target] + [s for s in served.config.data.symbols if s != served.config.data.target]
        market = load_bars(SHARED, symbols=symbols, timeframe="1h").bars
        end = market["BTCUSDT"].index[-1]
        start = end - pd.Timedelta(days=args.days) + pd.Timedelta(hours=1)
        db = root / "shadow.sqlite"
        began = time.perf_counter()
        counts = shadow("1h", registry, lambda config: replay_source(SHARED, symbols, start=start, end=end), db, start=start,
                        say=lambda line: None)
        wall = time.perf_counter() - began
        log = PredictionLog(db)
        frame = log.frame()
        # the parts, and the baselines: the batch code over the derived window, and over the whole history
        bars = frame["bar_time"].iloc[-48:]
        parts = {"streamed_features": [], "models_and_meta": [], "live_rows_window": [], "full_history": []}
        engine = StreamingFeatures(served.config, "1h", keep=served.rows)
        engine.catch_up(market, bars.iloc[0] - pd.Timedelta(hours=1))                       # warm-up, once
        for bar in bars:
            window = {s: b.loc[:bar] for s, b in market.items()}
            t0 = time.perf_counter(); engine.catch_up(window, bar); table = engine.table()
            t1 = time.perf_counter(); served.predict(table)
            t2 = time.perf_counter(); reference = live_rows(window, served.config, "1h", n_rows=served.rows)
            t3 = time.perf_counter(); features_at(window, served.config, "1h")
            t4 = time.perf_counter()
            assert np.allclose(table.to_numpy(), reference.to_numpy(), rtol=0, atol=1e-9, equal_nan=True)
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)): parts[name].append(seconds * 1000)
        median = {name: float(np.median(ms)) for name, ms in parts.items()}
        result = {
            "benchmark": "shadow mode, latency per bar on one core", "data": f"last {args.days} days of {SHARED.name}",
            "bars": int(len(frame)), "counts": counts, "replay_wall_s": round(wall, 1), "train_and_deploy_s": round(trained, 1),
            "end_to_end_ms": percentiles(frame["latency_ms"]),
            "parts_ms_last_48_bars": {name: percentiles(ms) for name, ms in parts.items()},
            "speedup_vs_live_rows": round(median["live_rows_window"] / median["streamed_features"], 1),
            "speedup_vs_full_history": round(median["full_history"] / median["streamed_features"], 1),
            "live_window_bars": live_window("1h"), "history_bars": int(len(market["BTCUSDT"])),
            "target_p50_ms": 5.0, "integrity": log.integrity(),
            "machine": {"platform": platform.platform(), "cores_used": 1}, "versions": library_versions(),
        }
        if args.monitor is not None:
            from macd_nb.serve.monitor import monitor_report
            result["monitor"] = str(monitor_report(db, registry, "1h", args.monitor))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("bars", "end_to_end_ms", "parts_ms_last_48_bars", "speedup_vs_live_rows",
                                             "speedup_vs_full_history")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
