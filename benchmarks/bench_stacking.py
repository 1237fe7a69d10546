"""Benchmark: stage 2's meta loop, comparison and diagnostics on ~30,000 OOF rows of five base models (no base refits).

What is timed is what `run_stacking` does after loading its inputs: the walk-forward of the five meta-learners and of
the five leave-one-out logistic walks, the shuffled-label control walk, and every interval (each meta-learner, each
leave-one-out change, the gain over the best base). The intervals are computed twice, in the same process: once the
way the stage does it (`SharedIntervals`: one set of block-bootstrap resamples for all scores) and once as a baseline,
one `auc_ci`/`auc_gain_ci` call per interval, which is how the stage did it before. Both must give the same numbers.

The inputs are synthetic by default (five correlated base models of a persistent hidden signal, hourly bars); with
`--run DIR` they are the OOF files of a real run (its `stacking_base_models`).

    python benchmarks/bench_stacking.py                 # 30,000 synthetic rows, five bases
    python benchmarks/bench_stacking.py --run runs/full # a run's own OOF predictions

Writes benchmarks/results/stacking.json.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from macd_nb.core.config import library_versions, profile_config, read_config
from macd_nb.core.parallel import machine_threads
from macd_nb.core.validation import as_utc_datetime64, auc, auc_ci, auc_gain_ci
from macd_nb.models.meta_learners import META_LEARNERS, meta_walk_forward, to_logit
from macd_nb.models.stacking import SharedIntervals, compare_meta_learners, leave_one_out, load_base_oof, meta_walks

REPO = Path(__file__).resolve().parents[1]
BASES = ["lgb", "xgb", "lstm", "tft", "lgb_cross"]


def synthetic_oof(n_rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    "Five base models' P(up) of a persistent hidden signal (AUC ~0.56 each, correlated), labels, label ends (1 bar)."
    rng = np.random.default_rng(seed)
    signal = np.zeros(n_rows)
    shocks = rng.normal(size=n_rows)
    for t in range(1, n_rows): signal[t] = 0.97 * signal[t - 1] + 0.25 * shocks[t]
    y = (signal + rng.normal(0, 3.0, n_rows) > 0).astype(float)
    common = rng.normal(size=n_rows)
    preds = {m: 1 / (1 + np.exp(-0.1 * (signal + 0.8 * common + rng.normal(0, 1.5, n_rows)))) for m in BASES}
    index = pd.date_range("2021-01-01", periods=n_rows, freq="1h", tz="UTC", name="open_time")
    oof = pd.DataFrame(preds, index=index).assign(y=y)
    return oof, as_utc_datetime64(index + pd.Timedelta(hours=1))


def run_oof(run_dir: Path) -> tuple[pd.DataFrame, np.ndarray, list[str], object]:
    "A run's checked OOF inputs, their label ends, its base models and configuration."
    from macd_nb.core.prepare import load_table
    config = read_config(run_dir).for_timeframe("1h")
    models = list(config.stacking.base_models)
    oof = load_base_oof(run_dir, "1h", models)
    table, _ = load_table(run_dir, "1h")
    label_end = as_utc_datetime64(table[f"label_end_{config.validation.label_horizon}"].reindex(oof.index))
    return oof, label_end, models, config


def separate_intervals(y, predictions: dict, oof: pd.DataFrame, models: list[str], chosen: str, best: str, config) -> dict:
    "The baseline: every interval the stage reports, one bootstrap call each."
    settings = dict(block=config.validation.bootstrap_block, n_boot=config.validation.bootstrap_samples, seed=config.seed)
    scored = np.isfinite(predictions["logistic"])
    y = y[scored]
    out = {name: list(auc_ci(y, predictions[name][scored], **settings)) for name in META_LEARNERS}
    out |= {f"{name}_vs_logistic": auc_gain_ci(y, predictions[name][scored], predictions["logistic"][scored], **settings)["ci95"]
            for name in META_LEARNERS}
    out |= {f"loo_{m}": auc_gain_ci(y, predictions["logistic"][scored], predictions[f"without_{m}"][scored], **settings)["ci95"]
            for m in models}
    out["gain_over_best"] = auc_gain_ci(y, predictions[chosen][scored], oof[best].to_numpy()[scored], **settings)["ci95"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000, help="synthetic OOF rows (default 30,000, the full profile's)")
    parser.add_argument("--run", type=Path, default=None, help="use this run's OOF predictions instead")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stacking.json")
    args = parser.parse_args(argv)
    if args.run:
        oof, label_end, models, config = run_oof(args.run)
        source = f"run {args.run.name}"
    else:
        config = profile_config("full", timeframes=["1h"])
        oof, label_end = synthetic_oof(args.rows, config.seed)
        models, source = BASES, "synthetic"
    X, y, times = to_logit(oof[models].to_numpy()), oof["y"].to_numpy(), as_utc_datetime64(oof.index)

    started = time.perf_counter()
    predictions, blocks = meta_walks(X, y, times, label_end, config, models)
    walked = time.perf_counter()
    scored = np.isfinite(predictions["logistic"])
    best = max(models, key=lambda m: auc(y[scored], oof[m].to_numpy()[scored]))
    intervals = SharedIntervals(y[scored], {name: pred[scored] for name, pred in predictions.items()}
                                | {best: oof[best].to_numpy()[scored]}, config)
    learners, chosen = compare_meta_learners(intervals)
    redundancy = leave_one_out(intervals, models)
    gain_over_best = intervals.gain(chosen, best)
    shared_done = time.perf_counter()
    shuffled = np.random.default_rng(config.seed).permutation(y)
    meta_walk_forward(X, shuffled, times, label_end, META_LEARNERS[chosen], n_blocks=config.stacking.meta_blocks)
    finished = time.perf_counter()

    baseline_started = time.perf_counter()
    separate = separate_intervals(y, predictions, oof, models, chosen, best, config)
    separate_s = time.perf_counter() - baseline_started
    shared = {name: row["ci95"] for name, row in learners.items()}
    shared |= {f"{name}_vs_logistic": row["gain_vs_logistic"]["ci95"] for name, row in learners.items()}
    shared |= {f"loo_{m}": v["gain_from_model"]["ci95"] for m, v in redundancy.items()}
    shared["gain_over_best"] = gain_over_best["ci95"]
    worst = max(abs(a - b) for k in separate for a, b in zip(shared[k], separate[k]))
    if worst > 1e-12: raise SystemExit(f"shared and separate intervals differ by {worst:.3g}: the benchmark is not comparing like with like")

    walk_s, shared_s, control_s = walked - started, shared_done - walked, finished - shared_done
    record = {
        "benchmark": "stacking", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source,
        "n_oof": len(oof), "n_scored": int(scored.sum()), "base_models": models, "meta_blocks": config.stacking.meta_blocks,
        "bootstrap_samples": config.validation.bootstrap_samples, "n_intervals": len(separate), "cores": machine_threads(),
        "stage_s": walk_s + shared_s + control_s, "meta_walks_s": walk_s, "shared_intervals_s": shared_s,
        "control_walk_s": control_s, "separate_intervals_s": separate_s, "intervals_speedup": separate_s / shared_s,
        "intervals_max_abs_difference": worst, "chosen": chosen, "oof_auc": learners[chosen]["auc"],
        "targets": {"stage_s_max": 20.0}, "versions": library_versions(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(f"{source}: {len(oof)} OOF rows, {len(models)} bases, {record['cores']} cores: stage {record['stage_s']:.1f} s "
          f"(walks {walk_s:.1f} s, intervals {shared_s:.1f} s, control {control_s:.1f} s); "
          f"{len(separate)} intervals one call each: {separate_s:.1f} s, shared resamples {shared_s:.1f} s "
          f"(**{record['intervals_speedup']:.1f}x**, identical to {worst:.1g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
