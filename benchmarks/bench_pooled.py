"""Benchmark: LightGBM trained on every symbol's rows against BTCUSDT's own, in the same purged folds, on real 1h data.

Every symbol of the full profile is prepared as its own target (scale-free base features, labels, exclusions), and
the rows are pooled (`macd_nb.models.pooled`). Both models run through the same code: the pooled walk-forward over
BTCUSDT's folds, once on the pool of all symbols and once on the pool of BTCUSDT alone, so only the rows a fold learns
from differ. Scored on BTCUSDT's OOF bars (paired), with the shuffled-label control of the pooled model, the best
single feature as the reference, the held-out test period (one refit on the validated window, as the stage does),
the break-even cost, and the pooled model's OOF AUC on every symbol.

    python benchmarks/bench_pooled.py                 # the full profile's 357 folds (about 30 minutes on 2 cores)
    python benchmarks/bench_pooled.py --folds 40      # a quicker look (writes recipe_pooled_40folds.json)
    python benchmarks/bench_pooled.py --every-symbol  # also each symbol's own walk-forward, paired on its bars
    python benchmarks/bench_pooled.py --context       # also both with the market's context (the cross-asset features)

Writes benchmarks/results/recipe_pooled.json.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from macd_nb.core.config import library_versions, profile_config
from macd_nb.core.parallel import machine_threads
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.validation import auc, auc_ci, auc_gain_ci
from macd_nb.models.backtest import break_even_cost, signal_positions, trade
from macd_nb.models.lgb import lgb_params
from macd_nb.models.pooled import FoldWindow, fold_windows, pool_tables, pooled_walk_forward
from macd_nb.models.protocol import best_feature_reference, direction_protocol, shuffled_labels

REPO = Path(__file__).resolve().parents[1]
# LightGBM as every profile had it before the full profile adopted STABLE_BOOSTING: one booster per fold, stopped
# early on the tail of its window (the pooled walk-forward fits one booster per fold)
ONE_BOOSTER = {"gbm_rounds_rule": "tail", "gbm_min_data_in_leaf": 100, "gbm_lambda_l2": 0.0, "gbm_seeds": 1,
               "gbm_bagging_fraction": 1.0, "gbm_feature_fraction": 1.0}
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA   # the one place that locates the shared real data


def scored_on(pool, pred, symbol: str, rows_of_table, times_of_table) -> tuple[np.ndarray, np.ndarray]:
    "The pool's predictions of `symbol`'s table rows (NaN where not scored), aligned to the table."
    rows = pool.rows_of(symbol)
    aligned = np.full(len(times_of_table), np.nan)
    position = np.searchsorted(times_of_table, pool.times[rows])
    aligned[position] = pred[rows]
    return aligned[rows_of_table], position


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=None, help="walk-forward folds (default: the full profile's 357)")
    parser.add_argument("--every-symbol", action="store_true", help="also each symbol's own walk-forward on its folds")
    parser.add_argument("--context", action="store_true",
                        help="also pooled and alone with each symbol's cross-asset features (market, BTC, ETH context)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"shared data not found at {args.data}: nothing to benchmark")
        return 0
    out = args.out or REPO / "benchmarks" / "results" / (f"recipe_pooled_{args.folds}folds.json" if args.folds
                                                          else "recipe_pooled.json")
    folds = {"n_folds": args.folds} if args.folds else {}
    config = profile_config("full", timeframes=["1h"], data_source=str(args.data), **folds, **ONE_BOOSTER)
    target, symbols = config.data.target, config.data.symbols
    work = Path(tempfile.mkdtemp(prefix="bench_pooled_"))
    started = time.perf_counter()
    tables, features, cross = {}, {}, {}
    for symbol in symbols:   # each symbol prepared as its own target: its features, labels and exclusions
        prepare_run(profile_config("full", timeframes=["1h"], data_source=str(args.data), target=symbol, **folds),
                    work / symbol)
        tables[symbol], summary = load_table(work / symbol, "1h")
        features[symbol], cross[symbol] = summary["base_features"], summary["cross_features"]
    names = [n for n in features[target] if all(n in f for f in features.values())]   # the features every symbol has
    context = names + [n for n in cross[target] if all(n in c for c in cross.values())]
    prepare_s = time.perf_counter() - started
    protocol = direction_protocol(tables[target], names, config)
    windows = fold_windows(protocol.folds, protocol.times)
    validated = protocol.validated_fold
    refit_window = FoldWindow(-1, protocol.times[validated.train_idx[0]], protocol.times[validated.train_idx[-1]],
                              protocol.times[validated.val_idx[0]], protocol.times[validated.val_idx[-1]])
    params = lgb_params(config, threads=1)
    settings = dict(num_boost_round=config.gbm.rounds, early_stopping_rounds=config.gbm.early_stopping_rounds,
                    inner_fraction=config.validation.inner_valid_fraction, rebin_every=config.gbm.rebin_folds,
                    n_jobs=machine_threads())
    pools = {"pooled": pool_tables(tables, names), "alone": pool_tables({target: tables[target]}, names)}
    if args.context:
        pools |= {"pooled_context": pool_tables(tables, context), "alone_context": pool_tables({target: tables[target]}, context)}
    v = config.validation
    ci = dict(block=v.bootstrap_block, n_boot=v.bootstrap_samples, seed=config.seed)
    dev_rows = np.concatenate([f.val_idx for f in protocol.folds])
    y_dev = protocol.y[dev_rows]
    results, oof, preds = {}, {}, {}
    for name, pool in pools.items():
        begun = time.perf_counter()
        pred, best = preds[name] = pooled_walk_forward(pool, windows, params, work / f"bin_{name}", **settings)
        oof[name], _ = scored_on(pool, pred, target, dev_rows, protocol.times)
        test_pred, _ = pooled_walk_forward(pool, [refit_window], params, work / f"bin_{name}_refit", **settings)
        test, _ = scored_on(pool, test_pred, target, protocol.scored_test_idx, protocol.times)
        shuffled = shuffled_labels(pool.y, np.flatnonzero(pool.times < protocol.times[protocol.test_idx[0]]), config.seed)
        control, _ = pooled_walk_forward(pool, windows, params, work / f"bin_{name}_shuffled", labels=shuffled, **settings)
        rows = pool.rows_of(target)
        control_rows = rows[np.isfinite(control[rows]) & np.isfinite(shuffled[rows])]
        scored = np.isfinite(oof[name]) & np.isfinite(y_dev)
        trades = trade(signal_positions(oof[name][scored], "long_short"),
                       tables[target]["fwd_ret_1"].to_numpy()[dev_rows][scored])
        results[name] = {"rows_per_fold": int(np.median([len(pool.y[(pool.times >= w.train_start) & (pool.times <= w.train_end)])
                                                         for w in windows[::max(1, len(windows) // 10)]])),
                         "oof_auc": auc(y_dev[scored], oof[name][scored]), "n_oof": int(scored.sum()),
                         "oof_auc_ci95": list(auc_ci(y_dev[scored], oof[name][scored], **ci)),
                         "test_auc": auc(protocol.y[protocol.scored_test_idx], test),
                         "test_auc_ci95": list(auc_ci(protocol.y[protocol.scored_test_idx], test, **ci)),
                         "n_test": len(protocol.scored_test_idx),
                         "shuffled_label_auc": auc(shuffled[control_rows], control[control_rows]),
                         "best_iterations": {"p25": float(np.percentile(best, 25)), "median": float(np.median(best)),
                                             "p75": float(np.percentile(best, 75))},
                         "break_even_bp_long_short": break_even_cost(trades), "seconds": time.perf_counter() - begun}
        if name == "pooled":
            results[name]["oof_auc_by_symbol"] = {}
            for symbol in symbols:
                rows = pool.rows_of(symbol)
                rows = rows[np.isfinite(pred[rows]) & np.isfinite(pool.y[rows])]
                results[name]["oof_auc_by_symbol"][symbol] = {"auc": auc(pool.y[rows], pred[rows]), "n": len(rows)}
        print(f"{name:<8} OOF AUC {results[name]['oof_auc']:.4f} {np.round(results[name]['oof_auc_ci95'], 4)} "
              f"(n={results[name]['n_oof']}), test {results[name]['test_auc']:.4f}, shuffled "
              f"{results[name]['shuffled_label_auc']:.4f}, {results[name]['seconds']:.0f} s")
    reference = best_feature_reference(protocol.X, protocol.y, protocol.folds, names, n_jobs=machine_threads())
    oof["best_feature"] = reference.oof_score[dev_rows]

    def gain(a: str, b: str) -> dict:
        "Paired OOF AUC gain of `a` over `b` on the target's bars both scored."
        both = np.isfinite(oof[a]) & np.isfinite(oof[b]) & np.isfinite(y_dev)
        return auc_gain_ci(y_dev[both], oof[a][both], oof[b][both], **ci)

    pairs = [("pooled", "alone")] + ([("alone_context", "alone"), ("pooled_context", "alone_context"),
                                      ("pooled_context", "alone")] if args.context else [])
    comparison = {**{f"gain_{a}_over_{b}": gain(a, b) for a, b in pairs},
                  **{f"gain_{name}_over_best_feature": gain(name, "best_feature") for name in pools},
                  "best_feature": reference.most_chosen()}
    comparison["adopt"] = bool(comparison["gain_pooled_over_alone"]["ci95"][0] > 0
                               and results["pooled"]["test_auc"] >= results["alone"]["test_auc_ci95"][0])
    for a, b in pairs:
        g = comparison[f"gain_{a}_over_{b}"]
        print(f"{a} - {b} on {target}: {g['gain']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}] (n={g['n']})")
    if args.every_symbol:   # each symbol's own rows in the same windows, paired with the pooled model on its bars
        own, pooled_pred = {}, preds["pooled"][0]
        for symbol in symbols:
            alone = pool_tables({symbol: tables[symbol]}, names)
            own_pred, _ = pooled_walk_forward(alone, windows, params, work / f"bin_own_{symbol}", **settings)
            rows = pools["pooled"].rows_of(symbol)
            y, pooled_p = pools["pooled"].y[rows], pooled_pred[rows]
            ok = np.isfinite(own_pred) & np.isfinite(pooled_p) & np.isfinite(y)   # the same bars, in the same order
            own[symbol] = auc_gain_ci(y[ok], pooled_p[ok], own_pred[ok], **ci) | {"own_auc": auc(y[ok], own_pred[ok])}
            print(f"  {symbol}: own {own[symbol]['own_auc']:.4f}, pooled - own {own[symbol]['gain']:+.4f} "
                  f"[{own[symbol]['ci95'][0]:+.4f}, {own[symbol]['ci95'][1]:+.4f}]")
        comparison["every_symbol"] = own
    record = {"benchmark": "recipe_pooled", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": Path(args.data).name, "target": target, "symbols": symbols, "timeframe": "1h",
              "start": config.data.start, "end": config.data.end, "n_folds": len(windows), "train_bars": v.train_bars,
              "n_features": len(names), "n_context_features": len(context) - len(names), "cores": machine_threads(), "prepare_s": prepare_s,
              "models": results, "comparison": comparison,
              "adoption_rule": "paired OOF gain of the pooled model over the target's own rows with a 95% interval "
                               "above zero, and a test AUC not below the own model's interval",
              "versions": library_versions(), "platform": platform.platform()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
