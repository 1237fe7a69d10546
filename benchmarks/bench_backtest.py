"""Benchmark: stage 2.1 (after-costs evaluation) on ~30,000 OOF bars of seven models, three variants, 21 cost levels.

The run directory is the synthetic market prepared over five years with the quick profile's folds (about 30,000
out-of-fold bars); the seven models' out-of-fold and test predictions are written directly (noisy functions of the
label, AUC about 0.55), so only the evaluation is timed: `run_backtest` end to end (band walk-forward per model and
per band share, every strategy's metrics, Sharpe intervals, the cost grid, the test period).

Baseline, in the same process: the Sharpe-over-costs curves of every strategy computed the plain way, one cost level
at a time through `performance` (empyrical), against the vectorised grid the stage uses; both must agree.

    python benchmarks/bench_backtest.py

Writes benchmarks/results/backtest.json.
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from macd_nb.core.config import library_versions, profile_config
from macd_nb.core.parallel import machine_threads
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.rundir import RunPaths, write_parquet
from macd_nb.models.backtest import bars_per_year, performance, run_backtest, sharpe_curve, signal_positions, trade
from macd_nb.models.protocol import direction_protocol

REPO = Path(__file__).resolve().parents[1]
MODELS = ["baseline", "lgb", "xgb", "lstm", "tft", "lgb_cross", "stacking"]


def write_predictions(run_dir: Path, config, seed: int = 0) -> int:
    "OOF and test predictions of seven models on the protocol's rows: noisy functions of the label. Returns n OOF bars."
    table, summary = load_table(run_dir, "1h")
    protocol = direction_protocol(table, summary["base_features"], config)
    scored = np.unique(np.concatenate([f.val_idx for f in protocol.folds]))
    scored = scored[np.isfinite(protocol.y[scored])]
    rng, paths = np.random.default_rng(seed), RunPaths(run_dir)
    for model in MODELS:
        for rows, file in ((scored, paths.oof_file(model, "1h")), (protocol.scored_test_idx, paths.test_file(model, "1h"))):
            y = protocol.y[rows]
            pred = 1 / (1 + np.exp(-(0.12 * (y - 0.5) + rng.normal(0, 1, len(rows)) * 0.9)))
            index = pd.DatetimeIndex(table.index[rows], name="open_time")
            write_parquet(file, pd.DataFrame({"y": y, "pred": pred}, index=index))
    return len(scored)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=float, default=5.0, help="years of synthetic hourly bars (default 5: ~30,000 OOF)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "backtest.json")
    args = parser.parse_args(argv)
    config = profile_config("quick", n_bars=int(24 * 365 * args.years), timeframes=["1h"], bootstrap_samples=1000)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_backtest_"))
    prepare_run(config, run_dir)
    n_oof = write_predictions(run_dir, config)

    started = time.perf_counter()
    record = run_backtest(config, run_dir, "1h")
    stage_s = time.perf_counter() - started

    table, _ = load_table(run_dir, "1h")
    oof = pd.read_parquet(RunPaths(run_dir).oof_file("lgb", "1h"))
    returns = table["fwd_ret_1"].reindex(oof.index).to_numpy()
    periods, grid = bars_per_year("1h"), config.backtest.cost_grid_bp
    strategies = [trade(signal_positions(pd.read_parquet(RunPaths(run_dir).oof_file(m, "1h"))["pred"].to_numpy(), v), returns)
                  for m in MODELS for v in ("long_flat", "long_short")]
    started = time.perf_counter()
    plain = [[performance(t, cost, periods)["sharpe"] for cost in grid] for t in strategies]
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    grid_curves = [sharpe_curve(t, grid, periods) for t in strategies]
    grid_s = time.perf_counter() - started
    worst = float(np.nanmax(np.abs(np.asarray(plain) - np.asarray(grid_curves))))
    if worst > 1e-9: raise SystemExit(f"the vectorised cost grid differs from the plain loop by {worst:.3g}")

    result = {
        "benchmark": "backtest", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": "synthetic",
        "n_oof": n_oof, "n_bars_scored": record["metrics"]["n_bars"], "models": len(MODELS), "variants": 3,
        "cost_levels": len(grid), "bootstrap_samples": config.validation.bootstrap_samples, "cores": machine_threads(),
        "stage_s": stage_s, "stage_timings_s": record["timings_s"],
        "cost_grid": {"strategies": len(strategies), "plain_loop_s": plain_s, "vectorised_s": grid_s,
                      "speedup": plain_s / grid_s, "max_abs_difference": worst},
        "targets": {"stage_s_max": 10.0}, "versions": library_versions(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"{n_oof} OOF bars ({record['metrics']['n_bars']} scored), {len(MODELS)} models x 3 variants x {len(grid)} costs, "
          f"{result['cores']} cores: stage {stage_s:.1f} s (target <= 10 s); cost grid of {len(strategies)} strategies: "
          f"plain loop {plain_s:.2f} s, vectorised {grid_s:.3f} s (**{result['cost_grid']['speedup']:.0f}x**)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
