"""Benchmark: the best-single-feature reference every model stage computes as a control (357 walk-forward folds of the
full profile on the shared real BTCUSDT 1h table, 99 base features).

Baseline, in the same process: the previous implementation, one fold after another with scipy's `rankdata` per fold
(kept below as `rankdata_aucs`), against `best_feature_reference` with its argsort-based AUCs, serially and with the
folds split over 2 worker processes; all three must choose the same feature on every fold and give the same scores.

    python benchmarks/bench_reference.py

Writes benchmarks/results/reference.json.
"""
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from macd_nb.core.config import library_versions, profile_config
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.models import protocol
from macd_nb.models.protocol import best_feature_reference, direction_protocol

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MACD_NB_SHARED_DATA") or REPO.parent / "shared" / "data" / "binance_spot_1h")


def rankdata_aucs(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    "The previous `feature_aucs`: scipy's average ranks of every column, NaN filled with the column median."
    from scipy.stats import rankdata
    X = np.where(np.isfinite(X), X, np.nanmedian(X, axis=0))
    ranks = rankdata(np.nan_to_num(X), axis=0)
    positives = y == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return (ranks[positives].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def main() -> int:
    if not SHARED.exists(): raise SystemExit(f"shared real data not found at {SHARED} (set MACD_NB_SHARED_DATA)")
    config = profile_config("full", data_source=str(SHARED), timeframes=["1h"])
    with tempfile.TemporaryDirectory() as tmp:
        prepare_run(config, tmp)
        table, summary = load_table(tmp, "1h")
    base = list(summary["base_features"])
    walk = direction_protocol(table, base + list(summary["cross_features"]), config)
    X = table[base].to_numpy(dtype=float)
    current = protocol.feature_aucs
    protocol.feature_aucs = rankdata_aucs                        # the baseline: the same loop, scipy's ranks, one process
    started = time.perf_counter(); before = best_feature_reference(X, walk.y, walk.folds, base, n_jobs=1)
    baseline = time.perf_counter() - started
    protocol.feature_aucs = current
    timings = {"rankdata_serial_s": baseline}
    for n_jobs in (1, 2):
        started = time.perf_counter(); after = best_feature_reference(X, walk.y, walk.folds, base, n_jobs=n_jobs)
        timings[f"argsort_{n_jobs}_process_s"] = time.perf_counter() - started
        assert after.choices == before.choices and np.array_equal(after.oof_score, before.oof_score, equal_nan=True)
    result = {"benchmark": "best-single-feature reference, full profile 1h", "folds": len(walk.folds), "rows": len(X),
              "features": len(base), **{k: round(v, 1) for k, v in timings.items()},
              "speedup_serial": round(baseline / timings["argsort_1_process_s"], 2),
              "speedup_2_processes": round(baseline / timings["argsort_2_process_s"], 2),
              "same_choices_and_scores": True, "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
              "versions": library_versions()}
    out = REPO / "benchmarks" / "results" / "reference.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "versions")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
