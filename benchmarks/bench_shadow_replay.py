"""Benchmark: how a replay's wall time grows with its length, today's shadow loop against the one before issue 19's
section 5 (same process, same deployed run, same real klines, one core).

The loop before (`macd_nb/serve/shadow.py` and `log.py` at commit BASELINE, read from git) scanned every bar since
`--start` on each bar and committed each row and each outcome fill as its own fsync'd transaction; today's keeps a
cursor, keeps the bars waiting for an outcome in memory and commits 64 bars per transaction. Both use today's streaming
features and predictor. Each replay ends at the last bar of the shared klines and starts `bars` hours earlier; every
replay writes a fresh log.

    python benchmarks/bench_shadow_replay.py [--bars 240,744,2184,8760] [--baseline-bars 240,744]

Writes benchmarks/results/shadow_replay.json.
"""
import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ[name] = "1"
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})          # one core

import numpy as np
import pandas as pd

from macd_nb.core.config import library_versions
from macd_nb.core.data import load_bars
from macd_nb.serve.log import PredictionLog
from macd_nb.serve.shadow import Served, replay_source, shadow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shadow import SHARED, deploy_smoke

REPO = Path(__file__).resolve().parents[1]
BASELINE = "3769f4a"   # the last commit before the constant-cost loop


def baseline_module(folder: Path):
    "shadow.py and log.py as they were at BASELINE, importable as one package beside today's modules."
    package = folder / "baseline_serve"
    package.mkdir()
    for name in ("shadow", "log"):
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE}:macd_nb/serve/{name}.py"], capture_output=True,
                              text=True, check=True).stdout
        text = re.sub(r"from \.\.(\w)", r"from macd_nb.\1", text)                       # ..core -> macd_nb.core
        text = re.sub(r"from \.(binance|stream|predictor) ", r"from macd_nb.serve.\1 ", text)   # .log stays the old one
        (package / f"{name}.py").write_text(text)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(folder))
    return importlib.import_module("baseline_serve.shadow")


def replay(loop, registry: Path, symbols: list[str], end: pd.Timestamp, bars: int, db: Path, **options) -> dict:
    "One replay of the last `bars` hours through `loop` (a shadow module); its wall time and what its log records."
    start = end - pd.Timedelta(hours=bars - 1)
    load = os.getloadavg()[0]   # 2 cores: above ~2, this process shares its core and wall time exceeds CPU time
    began, cpu = time.perf_counter(), time.process_time()
    counts = loop.shadow("1h", registry, lambda config: loop.replay_source(SHARED, symbols, start=start, end=end), db,
                         start=start, say=lambda line: None, **options)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu   # cpu: this process's time, whatever else runs
    frame = PredictionLog(db, read_only=True).frame()
    assert len(frame) == bars and frame["bar_time"].is_unique, (len(frame), bars)
    out = {"bars": bars, "wall_s": round(wall, 2), "bars_per_s": round(bars / wall, 1), "cpu_s": round(cpu, 2),
           "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)],   # before and after
           "latency_ms_p50": round(float(frame["latency_ms"].median()), 2), "predicted": counts["predicted"]}
    if "cycle_ms" in frame and frame["cycle_ms"].notna().any():
        out |= {"cycle_ms_p50": round(float(frame["cycle_ms"].median()), 2),
                "cycle_ms_p99": round(float(frame["cycle_ms"].quantile(0.99)), 2),
                "cycle_ms_sum_s": round(float(frame["cycle_ms"].sum()) / 1000, 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", default="240,744,2184,8760")
    parser.add_argument("--baseline-bars", default="240,744")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shadow_replay.json")
    args = parser.parse_args(argv)
    if not SHARED.exists(): raise SystemExit(f"shared real data not found at {SHARED} (set MACD_NB_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = deploy_smoke(root)
        served = Served.load("1h", registry)
        symbols = [served.config.data.target] + [s for s in served.config.data.symbols if s != served.config.data.target]
        end = load_bars(SHARED, symbols=["BTCUSDT"], timeframe="1h").bars["BTCUSDT"].index[-1]
        before = baseline_module(root)
        today = sys.modules["macd_nb.serve.shadow"]
        runs = {"baseline": [], "today": []}
        for bars in [int(b) for b in args.baseline_bars.split(",") if b]:
            runs["baseline"].append(replay(before, registry, symbols, end, bars, root / f"before_{bars}.sqlite"))
            runs["today"].append(replay(today, registry, symbols, end, bars, root / f"today_{bars}.sqlite", fast_replay=True))
            print(runs["baseline"][-1], runs["today"][-1], flush=True)
        for bars in [int(b) for b in args.bars.split(",") if b and int(b) not in [r["bars"] for r in runs["today"]]]:
            runs["today"].append(replay(today, registry, symbols, end, bars, root / f"today_{bars}.sqlite", fast_replay=True))
            print(runs["today"][-1], flush=True)
    runs["today"].sort(key=lambda r: r["bars"])
    today_by = {r["bars"]: r for r in runs["today"]}
    ratios = {str(r["bars"]): round(r["wall_s"] / today_by[r["bars"]]["wall_s"], 1) for r in runs["baseline"]}
    first, last = runs["today"][0], runs["today"][-1]
    marginal = (last["wall_s"] - first["wall_s"]) / (last["bars"] - first["bars"]) * 1000 if len(runs["today"]) > 1 else None
    result = {"benchmark": "shadow replay wall time against its length, one core", "data": f"the last N hours of {SHARED.name}",
              "baseline_commit": BASELINE, "runs": runs, "speedup_same_bars": ratios,
              "today_marginal_ms_per_bar": None if marginal is None else round(marginal, 2),
              "target": "8760 bars within 60 s on one core",
              "load_average_at_end": os.getloadavg(), "cores_used": 1, "machine": platform.platform(), "versions": library_versions()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup_same_bars", "today_marginal_ms_per_bar")} | {"today": runs["today"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
