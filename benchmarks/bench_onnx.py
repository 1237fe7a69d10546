"""Benchmark: ONNX export of a run's serving models, parity on real feature rows, single-thread latency native vs ONNX Runtime.

Runs stage 3 (`macd_nb.export.onnx.run_export`) on existing run directories and keeps, per model, the parity record
(rows, max |Δp|, decisions flipped, whether a perturbed copy fails) and the p50/p99 latency of a batch of 1 and of 256
rows on one thread, native against ONNX Runtime, both after warm-up, in the same process.

    python benchmarks/bench_onnx.py runs/<quick run> runs/<full run>

Writes benchmarks/results/onnx.json.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from macd_nb.core.config import library_versions, read_config
from macd_nb.export.onnx import run_export

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories whose model stages have run")
    parser.add_argument("--timeframe", default="1h")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onnx.json")
    args = parser.parse_args(argv)
    runs = []
    for run_dir in args.runs:
        config = read_config(run_dir)
        prepare = json.loads((run_dir / "results" / "prepare.json").read_text())
        source = prepare["data_source"]
        started = time.perf_counter()
        record = run_export(config, run_dir, args.timeframe)
        runs.append({"profile": config.profile, "data": source if source == "synthetic" else Path(source).name,
                     "target": config.data.target, "timeframe": args.timeframe, "seconds": time.perf_counter() - started,
                     "n_parity_rows": record["metrics"]["n_parity_rows"],
                     "models": {name: {k: e[k] for k in ("exporter", "parity", "perturbed_fails", "latency_ms")}
                                for name, e in record["exports"].items()}})
        for name, e in record["exports"].items():
            lat = e["latency_ms"]
            print(f"{config.profile} {name}: max |dp| {e['parity']['max_abs_diff']:.1e}, {e['parity']['flips']} flipped; "
                  + "; ".join(f"{b}: native {lat[b]['native']['p50_ms']:.3f} ms, onnx {lat[b]['onnx']['p50_ms']:.3f} ms" for b in lat))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "onnx", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "threads": 1, "runs": runs, "versions": library_versions(),
                                    "platform": platform.platform()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
