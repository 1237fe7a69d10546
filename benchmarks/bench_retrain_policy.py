"""Benchmark: does retraining help? The retrain-policy simulation (`macd_nb.pipeline.policy_simulation`) over 2025 on the
real BTCUSDT hourly bars, 12 monthly points, the full profile's LightGBM recipe (a one-year window), two LightGBM threads.

Policies on the same 8,759 served bars: never retrain, retrain and always promote (as FreqAI), retrain and promote when
not worse (`promotion_decision`), retrain when the monitor's limits are crossed. Then the same fits decided again with
wider margins (the rule alone changes, nothing is refitted), to show what the margin does.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_retrain_policy.py [--margins 0.01,0.02] [--threads 2]

Writes benchmarks/results/retrain_policy.json and its plot, retrain_policy.png. Target: the 12-point simulation within
5 minutes of wall time on 2 cores.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd

from macd_nb.core.config import library_versions, profile_config
from macd_nb.core.data import load_bars
from macd_nb.core.parallel import machine_threads
from macd_nb.core.prepare import timeframe_table
from macd_nb.pipeline.policy_simulation import plot_policy_auc, policy_table, simulate_retrain_policies
from macd_nb.pipeline.retrain_policy import PROMOTION_MARGIN, Market

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA as SHARED   # the one place that locates the shared real data

TARGET_S = 300   # the target: 12 monthly points within 5 minutes on 2 cores


def _plain(value):
    "JSON for numpy numbers and timestamps."
    if isinstance(value, (np.floating, np.integer)): return value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)): return str(value)
    raise TypeError(f"{type(value)} is not JSON")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--start", default="2025-01-01", help="first served bar")
    parser.add_argument("--end", default="2026-01-01", help="end of serving (exclusive)")
    parser.add_argument("--every", default="MS", help="pandas offset between retrain points (MS: month starts)")
    parser.add_argument("--history-periods", type=int, default=3)
    parser.add_argument("--folds-per-period", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    parser.add_argument("--margins", default="0.01,0.02", help="margins decided again on the same fits")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retrain_policy.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"shared data not found at {args.data}: nothing to benchmark")
        return 0

    load_before = os.getloadavg()[0]
    began, cpu = time.perf_counter(), time.process_time()
    config = profile_config("full", data_source=str(args.data), symbols=[args.symbol], timeframes=["1h"])
    first_fit = pd.Timestamp(args.start) - pd.tseries.frequencies.to_offset(args.every) * args.history_periods
    load_from = first_fit - pd.Timedelta(hours=config.validation.train_bars) - pd.Timedelta(days=60)   # window + warm-up
    bars = load_bars(config.data.source, symbols=[args.symbol], start=f"{load_from:%Y-%m-%d}", end=config.data.end,
                     timeframe="1h", cache_dir=False).bars
    table, summary = timeframe_table(bars, config, "1h")
    market = Market.from_table(table, summary["base_features"], config.validation.label_horizon)
    prepared = time.perf_counter()
    options = dict(every=args.every, history_periods=args.history_periods, folds_per_period=args.folds_per_period)
    simulation = simulate_retrain_policies(market, config, args.start, args.end, threads=args.threads, **options)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(policy_table(simulation.record).to_string())

    def gated_again(**rule) -> dict:
        "The gated policy decided again on the same fits under another rule."
        again = simulate_retrain_policies(market, config, args.start, args.end, fits=simulation.fits, progress=False,
                                          **options, **rule)
        gated = again.record["policies"]["gated"]
        return {k: gated[k] for k in ("auc", "auc_ci95", "gain_vs_never", "retrains", "promotions")} | {
            "sharpe": gated["after_costs"]["sharpe"], "sharpe_ci95": gated["after_costs"]["sharpe_ci95"],
            "monitor_promotions": again.record["policies"]["monitor"]["promotions"],
            "decisions": [(d["at"][:10], d["decision"]) for d in again.record["decisions"]["gated"]]}
    margins = {str(float(m)): gated_again(margin=float(m)) for m in args.margins.split(",") if m}
    pooled = gated_again(comparison="pooled")   # the default margin, the two sides' AUC pooled over the walk-forward fits

    figure = plot_policy_auc(simulation, title=f"real {args.symbol} 1h, {args.start[:4]}: served AUC per month")
    figure.savefig(args.out.with_suffix(".png"), dpi=90, bbox_inches="tight")
    record = simulation.record
    result = {
        "benchmark": f"retrain policies over {args.start}..{args.end} on real {args.symbol} 1h, "
                     f"{len(simulation.schedule.points)} retrain points ({args.every})",
        "data": args.data.name, "target": args.symbol, "table": {"first_bar": str(table.index[0]), "last_bar": str(table.index[-1]),
                                                                 "rows": len(table), "features": len(market.feature_names)},
        "profile": "full (its gbm settings and one-year window), one symbol: base features only",
        "cores": machine_threads(), "lightgbm_threads": args.threads, "platform": platform.platform(),
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "prepare_s": round(prepared - began, 1),
        "target_wall_s": TARGET_S, "within_target": wall <= TARGET_S,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "default_margin": PROMOTION_MARGIN, "margins": margins, "pooled_comparison": pooled,
        "period_auc": {str(t)[:10]: row for t, row in simulation.period_auc.round(4).to_dict(orient="index").items()},
        **record, "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (target {TARGET_S} s): {args.out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
