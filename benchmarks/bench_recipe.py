"""Benchmark: variants of the boosting recipe on real BTCUSDT 1h, each the whole LightGBM stage on the same folds, paired against today's default.

Each variant is a setting of `RunConfig.gbm` (nothing else differs): the stage's walk-forward over the full
profile's 357 purged folds, its refit scored once on the held-out test period, its shuffled-label control and the
best-single-feature reference, exactly as a pipeline run does. The logistic-regression baseline runs once on the same
folds, as a reference.

    python benchmarks/bench_recipe.py                                  # every variant (about 40 minutes on 2 cores)
    python benchmarks/bench_recipe.py --variants default,earlier_folds
    python benchmarks/bench_recipe.py --folds 60                       # 60 folds over the same years: a quick look
    python benchmarks/bench_recipe.py --horizons 1,4,12,24             # the adopted recipe per label horizon, after costs

With --horizons, each horizon h is the LightGBM stage on labels h bars ahead (`label_horizon`), then the backtest
stage on its OOF predictions: a signal every bar, each held h bars as one of h tranches (the backtest's handling of
overlapping positions), at the backtest's cost per side; writes recipe_horizons.json.

Adoption rule (issue 24): a variant becomes the default only if its paired OOF gain over the default has a 95%
interval above zero and its test AUC does not fall beyond its interval; otherwise it stays a documented setting.

Writes benchmarks/results/recipe_boosting.json (with --folds: recipe_boosting_<N>folds.json).
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

import numpy as np
import pandas as pd

from macd_nb.core.config import STABLE_BOOSTING, library_versions, profile_config
from macd_nb.core.parallel import machine_threads
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.rundir import RunPaths, read_parquet
from macd_nb.core.validation import auc, auc_gain_ci
from macd_nb.models.backtest import break_even_cost, run_backtest, signal_positions, trade
from macd_nb.models.baseline import run_baseline
from macd_nb.models.lgb import run_lgb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA   # the one place that locates the shared real data

# "default": the recipe every profile had before this comparison (one booster stopped early on the tail of its
# window); the full profile has since adopted `all_three` (`STABLE_BOOSTING`). Each variant: flat settings over the
# full profile, one idea each, then the three together
TAIL = {"gbm_rounds_rule": "tail", "gbm_min_data_in_leaf": 100, "gbm_lambda_l2": 0.0, "gbm_seeds": 1,
        "gbm_bagging_fraction": 1.0, "gbm_feature_fraction": 1.0}
VARIANTS = {
    "default": TAIL,
    "earlier_folds": TAIL | {"gbm_rounds_rule": "earlier_folds"},
    "regularised": TAIL | {"gbm_min_data_in_leaf": 400, "gbm_lambda_l2": 10.0, "gbm_feature_fraction": 0.5},
    "bagged": TAIL | {"gbm_seeds": 5, "gbm_bagging_fraction": 0.7, "gbm_feature_fraction": 0.7},
    "slow_earlier_folds": TAIL | {"gbm_rounds_rule": "earlier_folds", "gbm_learning_rate": 0.02, "gbm_rounds": 750,
                                  "early_stopping_rounds": 75},
    "all_three": TAIL | STABLE_BOOSTING,
}


def changes(settings: dict) -> dict:
    "The settings of a variant that differ from the recipe before the comparison."
    return {key: value for key, value in settings.items() if TAIL.get(key) != value}


def spread(counts) -> dict:
    "Quantiles of tree counts per fold and how much the count moves from one fold to the next."
    counts = np.asarray(counts, dtype=float)
    q = np.percentile(counts, [0, 25, 50, 75, 100])
    return {"min": q[0], "p25": q[1], "median": q[2], "p75": q[3], "max": q[4],
            "cv": float(counts.std() / counts.mean()) if counts.mean() else float("nan"),
            "median_abs_change": float(np.median(np.abs(np.diff(counts)))) if len(counts) > 1 else 0.0}


def variant_record(name: str, record: dict, oof: pd.DataFrame, default: dict | None, returns: pd.Series,
                   seconds: float, config) -> dict:
    "One row of the comparison: accuracy with intervals, paired gains, tree counts, test, costs, control, time."
    m, v = record["metrics"], config.validation
    counts = record.get("fold_rounds") or record["best_iterations"]
    scored = oof.dropna()
    trades = trade(signal_positions(scored["pred"], "long_short"), returns.reindex(scored.index).to_numpy())
    row = {"settings": changes(VARIANTS[name]), "oof_auc": m["oof_auc"], "oof_auc_ci95": m["oof_auc_ci95"], "n_oof": m["n_oof"],
           "gain_over_best_feature": record["reference_gains"].get("best_feature"),
           "gain_over_baseline": record["reference_gains"].get("baseline"),
           "test_auc": m["test_auc"], "test_auc_ci95": m["test_auc_ci95"], "n_test": m["n_test"],
           "tree_counts": spread(counts), "tail_stopped_counts": spread(record["best_iterations"]),
           "refit_rounds": record["refit_rounds"], "served_refit_rounds": record["served_refit"]["refit_rounds"],
           "break_even_bp_long_short": break_even_cost(trades),
           "shuffled_label_auc": record["controls"]["shuffled_label_auc"], "seconds": seconds}
    if default is not None:   # paired on the rows both scored; the test period is scored once per variant
        both = scored.join(default["oof"]["pred"].rename("default"), how="inner").dropna()
        row["gain_over_default"] = auc_gain_ci(both["y"], both["pred"], both["default"], block=v.bootstrap_block,
                                               n_boot=v.bootstrap_samples, seed=config.seed)
        row["adopt"] = bool(row["gain_over_default"]["ci95"][0] > 0 and m["test_auc"] >= default["test_auc_ci95"][0])
    return row


def horizon_record(run, backtest: dict, seconds: float) -> dict:
    "One horizon: the stage's accuracy and reference, and what its OOF predictions earn after costs."
    m, oof = run.record["metrics"], backtest["oof"]
    return {"oof_auc": m["oof_auc"], "oof_auc_ci95": m["oof_auc_ci95"], "n_oof": m["n_oof"],
            "gain_over_best_feature": run.record["reference_gains"].get("best_feature"),
            "best_feature": run.record["best_feature"]["most_chosen"],
            "test_auc": m["test_auc"], "test_auc_ci95": m["test_auc_ci95"], "n_test": m["n_test"],
            "shuffled_label_auc": run.record["controls"]["shuffled_label_auc"], "cost_bp": backtest["cost_bp"],
            **{f"{variant}_{key}": oof[f"lgb/{variant}"][key] for variant in ("long_short", "band")
               for key in ("break_even_bp", "sharpe", "sharpe_ci95", "turnover_per_year")},
            "buy_and_hold_sharpe": oof["buy_and_hold"]["sharpe"], "n_bars": backtest["metrics"]["n_bars"], "seconds": seconds}


def run_horizons(args, folds: dict, run_dir: Path, base) -> dict:
    "The recipe `args.variant` per label horizon: the LightGBM stage, then the backtest stage on its OOF predictions."
    rows = {}
    print(f"{'horizon':<9}{'OOF AUC':>9}{'gain vs best feature':>30}{'test AUC':>10}{'BE bp l/s':>11}{'BE bp band':>11}"
          f"{'Sharpe band':>13}{'s':>6}")
    for h in args.horizons:
        config = profile_config("full", timeframes=["1h"], data_source=str(args.data), label_horizon=h, **folds,
                                **VARIANTS[args.variant])
        started = time.perf_counter()
        run = run_lgb(config, run_dir, "1h")
        backtest = run_backtest(config, run_dir, "1h")
        rows[str(h)] = r = horizon_record(run, backtest, time.perf_counter() - started)
        print(f"{h:<9}{r['oof_auc']:>9.4f}{_gain_text(r['gain_over_best_feature']):>30}{r['test_auc']:>10.4f}"
              f"{r['long_short_break_even_bp']:>11.2f}{r['band_break_even_bp']:>11.2f}{r['band_sharpe']:>13.2f}{r['seconds']:>6.0f}")
    return {"benchmark": "recipe_horizons", "variant": args.variant, "settings": changes(VARIANTS[args.variant]),
            "execution": backtest["execution"], "horizons": rows}


def _gain_text(gain: dict | None) -> str:
    return f"{gain['gain']:+.4f} [{gain['ci95'][0]:+.4f}, {gain['ci95'][1]:+.4f}]" if gain else "(reference)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--folds", type=int, default=None, help="walk-forward folds (default: the full profile's 357)")
    parser.add_argument("--horizons", type=lambda text: [int(h) for h in text.split(",")], default=None,
                        help="label horizons in bars, e.g. 1,4,12,24: the horizon comparison instead of the variants")
    parser.add_argument("--variant", default="all_three", choices=list(VARIANTS),
                        help="the recipe of the horizon comparison (default: the one the full profile adopted)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown: parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if names[0] != "default": names = ["default"] + [n for n in names if n != "default"]   # the pairing needs it first
    if not args.data.exists():
        print(f"shared data not found at {args.data}: nothing to benchmark")
        return 0
    kind = "horizons" if args.horizons else "boosting"
    out = args.out or REPO / "benchmarks" / "results" / (f"recipe_{kind}_{args.folds}folds.json" if args.folds
                                                          else f"recipe_{kind}.json")
    folds = {"n_folds": args.folds} if args.folds else {}
    base = profile_config("full", timeframes=["1h"], data_source=str(args.data), **folds)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_recipe_"))
    started = time.perf_counter()
    prepare_run(base, run_dir)
    table, _ = load_table(run_dir, "1h")
    returns = table["fwd_ret_1"]
    prepare_s = time.perf_counter() - started
    about = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": Path(args.data).name,
             "target": base.data.target, "timeframe": "1h", "start": base.data.start, "end": base.data.end,
             "n_folds": base.validation.n_folds, "train_bars": base.validation.train_bars, "cores": machine_threads(),
             "prepare_s": prepare_s}
    if args.horizons:
        record = about | run_horizons(args, folds, run_dir, base) | {"versions": library_versions(), "platform": platform.platform()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=float))
        print(f"wrote {out}")
        return 0
    started = time.perf_counter()
    run_baseline(base, run_dir, "1h")
    baseline_s = time.perf_counter() - started
    paths = RunPaths(run_dir)
    baseline_oof = read_parquet(paths.oof_file("baseline", "1h"))
    results, default = {}, None
    print(f"{'variant':<20}{'OOF AUC':>9}{'gain vs default':>28}{'test AUC':>10}{'trees p25-p75':>15}{'BE bp':>7}{'s':>7}")
    for name in names:
        config = profile_config("full", timeframes=["1h"], data_source=str(args.data), **folds, **VARIANTS[name])
        started = time.perf_counter()
        run = run_lgb(config, run_dir, "1h")
        seconds = time.perf_counter() - started
        oof = read_parquet(paths.oof_file("lgb", "1h"))
        results[name] = variant_record(name, run.record, oof, default, returns, seconds, config)
        if name == "default": default = {"oof": oof, "test_auc_ci95": run.record["metrics"]["test_auc_ci95"]}
        r = results[name]
        gain = r.get("gain_over_default")
        gain_text = _gain_text(gain)
        print(f"{name:<20}{r['oof_auc']:>9.4f}  {gain_text:>26}{r['test_auc']:>10.4f}"
              f"{r['tree_counts']['p25']:>8.0f}-{r['tree_counts']['p75']:<6.0f}{r['break_even_bp_long_short']:>7.2f}{seconds:>7.0f}")
    baseline = baseline_oof.dropna()
    record = {"benchmark": "recipe_boosting", **about,
              "baseline": {"oof_auc": auc(baseline["y"], baseline["pred"]), "seconds": baseline_s},
              "adoption_rule": "paired OOF gain over the default with a 95% interval above zero, and a test AUC not "
                               "below the default's interval",
              "variants": results, "versions": library_versions(), "platform": platform.platform()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
