"""Benchmark: the 357-fold LightGBM walk-forward on the shared BTCUSDT hourly data, fast path against a naive loop.

Fast path (what stage 1.1 runs): the table is binned once per 30 folds, with bin edges from the training window of
the group's first fold only, saved as LightGBM binary files; the folds run in worker processes (`parallel_map`),
each fold a `subset` of a binned table.
Naive loop: in this process, one fold after the other, a fresh `lightgbm.Dataset` built from the raw features of every
fold (fit rows and early-stopping rows), same parameters and folds, LightGBM using all cores.

    python benchmarks/bench_lgb_walkforward.py                  # all 357 folds, both paths
    python benchmarks/bench_lgb_walkforward.py --folds 40       # a quick subset (the first 40 folds)
    python benchmarks/bench_lgb_walkforward.py --naive-folds 60 # naive timed on 60 evenly spaced folds, extrapolated

Writes benchmarks/results/lgb_walkforward.json.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import numpy as np

from macd_nb.core.config import library_versions, profile_config
from macd_nb.models.lgb import bin_schedule, lgb_params, lgb_walk_forward
from macd_nb.models.protocol import direction_protocol, fold_rows
from macd_nb.core.parallel import machine_threads, worker_layout
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.validation import auc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA as SHARED   # the one place that locates the shared real data


def naive_fold(X, y, rows, params, num_boost_round, early_stopping_rounds) -> tuple[np.ndarray, int]:
    "One fold the plain way: Datasets built from raw features (bins fitted on this fold), fit, predict."
    fit = lgb.Dataset(X[rows.fit_idx], y[rows.fit_idx], params=params)
    stop = lgb.Dataset(X[rows.stop_idx], y[rows.stop_idx], reference=fit, params=params)
    booster = lgb.train(params, fit, num_boost_round, valid_sets=[stop],
                        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])
    best = booster.best_iteration or num_boost_round
    return booster.predict(X[rows.val_idx], num_iteration=best), best


def pooled_auc(y, pred, rows) -> float:
    "Pooled AUC over the scored rows of `rows`."
    idx = np.concatenate([r.val_idx for r in rows])
    return auc(y[idx], pred[idx])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=None, help="run only the first N folds (default: all)")
    parser.add_argument("--naive-folds", type=int, default=None,
                        help="time the naive loop on N evenly spaced folds and extrapolate (default: all folds run)")
    parser.add_argument("--n-jobs", type=int, default=None, help="worker processes of the fast path (default: cores)")
    parser.add_argument("--threads-per-job", type=int, default=1)
    parser.add_argument("--naive-threads", type=int, default=None, help="LightGBM threads of the naive loop (default: cores)")
    parser.add_argument("--max-bin", type=int, default=None, help="override max_bin for both paths (default: the config's)")
    parser.add_argument("--rebin-every", type=int, default=None,
                        help="re-bin every N folds, edges from that fold's training window (>= folds: bin once; default: the config's)")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lgb_walkforward.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"shared data not found at {args.data}: nothing to benchmark")
        return 0

    config = profile_config("full", timeframes=["1h"], data_source=str(args.data))
    args.rebin_every = args.rebin_every or config.gbm.rebin_folds
    run_dir = Path(tempfile.mkdtemp(prefix="bench_lgb_"))
    started = time.perf_counter()
    prepare_run(config, run_dir)
    table, summary = load_table(run_dir, "1h")
    protocol = direction_protocol(table, summary["base_features"], config)
    prepare_s = time.perf_counter() - started
    if args.folds: protocol.folds = protocol.folds[:args.folds]
    n_folds = len(protocol.folds)

    n_jobs, threads = worker_layout(n_folds, args.n_jobs, args.threads_per_job)
    params = lgb_params(config, threads=threads)
    if args.max_bin: params["max_bin"] = args.max_bin
    settings = dict(num_boost_round=config.gbm.rounds, early_stopping_rounds=config.gbm.early_stopping_rounds,
                    inner_fraction=config.validation.inner_valid_fraction, purge=config.validation.purge_bars)

    started = time.perf_counter()
    dataset_path = bin_schedule(protocol.X, protocol.folds, params, run_dir / "cache", protocol.feature_names,
                                every=args.rebin_every)
    binned_at = time.perf_counter()
    fast, fast_best = lgb_walk_forward(protocol, params, dataset_path, n_jobs=n_jobs, **settings)
    fast_s = time.perf_counter() - started
    binning_s = binned_at - started

    rows = fold_rows(protocol.folds, protocol.y, inner_fraction=config.validation.inner_valid_fraction, purge=config.validation.purge_bars)
    n_naive = min(args.naive_folds or n_folds, n_folds)
    naive_ids = np.unique(np.linspace(0, n_folds - 1, n_naive).round().astype(int))
    naive_threads = args.naive_threads or machine_threads()
    naive_params = params | {"num_threads": naive_threads}
    naive_pred = np.full(len(protocol.y), np.nan)
    naive_best = []
    started = time.perf_counter()
    for k in naive_ids:
        pred, best = naive_fold(protocol.X, protocol.y, rows[k], naive_params, config.gbm.rounds, config.gbm.early_stopping_rounds)
        naive_pred[rows[k].val_idx] = pred
        naive_best.append(best)
    naive_measured_s = time.perf_counter() - started
    naive_s = naive_measured_s * n_folds / len(naive_ids)

    naive_rows = [rows[k] for k in naive_ids]
    fast_oof = np.full(len(protocol.y), np.nan)
    fast_oof[:len(fast.oof_pred)] = fast.oof_pred
    record = {
        "benchmark": "lgb_walkforward", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": Path(args.data).name, "target": config.data.target, "rows": len(table), "n_features": len(protocol.feature_names),
        "n_folds": n_folds, "train_bars": config.validation.train_bars, "fold_val_rows": int(len(protocol.folds[0].val_idx)),
        "params": params, "rebin_every": args.rebin_every, "binnings": len(set(dataset_path)), "cores": machine_threads(), "fast_layout": f"{n_jobs} processes x {threads} threads",
        "naive_threads": naive_threads, "prepare_s": prepare_s,
        "fast": {"wall_s": fast_s, "binning_s": binning_s, "folds_s": fast_s - binning_s,
                 "oof_auc": pooled_auc(protocol.y, fast_oof, rows),
                 "oof_auc_on_naive_folds": pooled_auc(protocol.y, fast_oof, naive_rows),
                 "median_best_iteration": float(np.median(fast_best))},
        "naive": {"folds_timed": len(naive_ids), "measured_s": naive_measured_s, "wall_s": naive_s,
                  "extrapolated": len(naive_ids) < n_folds,
                  "oof_auc": pooled_auc(protocol.y, naive_pred, naive_rows),
                  "median_best_iteration": float(np.median(naive_best))},
        "speedup": naive_s / fast_s,
        "targets": {"fast_wall_s_max": 120, "speedup_min": 4.0},
        "versions": library_versions(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str))

    naive_note = (f"timed on {len(naive_ids)} of {n_folds} folds, extrapolated per fold" if record["naive"]["extrapolated"]
                  else f"all {n_folds} folds")
    print(f"LightGBM walk-forward, {config.data.target} 1h: {len(table)} rows, {len(protocol.feature_names)} features, "
          f"{n_folds} folds, {machine_threads()} cores")
    print(f"{'path':<8}{'wall s':>9}{'pooled OOF AUC':>16}  notes")
    print(f"{'fast':<8}{fast_s:>9.1f}{record['fast']['oof_auc']:>16.4f}  binning {binning_s:.2f} s, "
          f"{record['binnings']} binnings, {record['fast_layout']}; on the naive folds {record['fast']['oof_auc_on_naive_folds']:.4f}")
    print(f"{'naive':<8}{naive_s:>9.1f}{record['naive']['oof_auc']:>16.4f}  {naive_note}, {naive_threads} threads")
    print(f"speed-up {record['speedup']:.2f}x (target >= 4x); fast {'within' if fast_s <= 120 else 'OVER'} 2 minutes")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
