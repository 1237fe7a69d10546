"""CatBoost (stage 1.6) on the real Binance data with the full profile, beside the boosters measured there before.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_catboost_real.py [--timeframes 1h 4h] [--keep RUN_DIR]

Prepares the full profile on the shared data and runs the CatBoost stage with the settings of the run behind
`benchmarks/results/full_cpu.json` (2 processes x 1 thread), then adds CatBoost's rows to that file's models, but only
when the prepared data's fingerprint is the one those rows were measured on: the same bars and features, so the
out-of-fold AUCs compare. `python benchmarks/readme_tables.py` then writes them into the measured tables.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from collect_run import MODEL_ORDER, model_row  # noqa: E402
from conftest import SHARED_DATA as SHARED   # noqa: E402  (the one place that locates the shared real data)

RESULTS = ROOT / "benchmarks" / "results" / "full_cpu.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--timeframes", nargs="+", default=["1h", "4h"])
    parser.add_argument("--keep", type=Path, help="run directory to use and keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"shared data not found at {args.data}: nothing to benchmark")
        return 0
    from macd_nb.core.config import profile_config
    from macd_nb.core.prepare import prepare_run
    from macd_nb.models.catboost import run_catboost
    measured = json.loads(RESULTS.read_text())
    config = profile_config("full", data_source=str(args.data), timeframes=args.timeframes, n_jobs=2, threads_per_job=1)
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="macd_nb_catboost_real_"))
    started = time.perf_counter()
    prepare_run(config, run_dir)
    prepared = time.perf_counter()
    rows = []
    for timeframe in args.timeframes:
        record = run_catboost(config, run_dir, timeframe).record
        if record["data_fingerprint"] != measured["data_fingerprint"]:
            print(f"the prepared data ({record['data_fingerprint'][:19]}) is not what {RESULTS.name} was measured on "
                  f"({measured['data_fingerprint'][:19]}): its rows would not compare; nothing written", file=sys.stderr)
            return 1
        rows.append(model_row(record))
        print(f"catboost {timeframe}: OOF AUC {record['metrics']['oof_auc']:.4f} {record['metrics']['oof_auc_ci95']}, "
              f"test AUC {record['metrics']['test_auc']:.4f}, {record['timings_s']['total']:.0f} s")
    measured["models"] = sorted([m for m in measured["models"] if m["model"] != "catboost"] + rows,
                                key=lambda m: (m["timeframe"], MODEL_ORDER.index(m["model"])))
    measured["catboost"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "where": "2 CPU cores, 2 processes x 1 thread; prepare and the CatBoost stage alone "
                                     "(benchmarks/bench_catboost_real.py), on the data the other rows were measured on",
                            "prepare_seconds": prepared - started, "versions": record["versions"]}
    RESULTS.write_text(json.dumps(measured, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
