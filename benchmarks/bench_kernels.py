"""Benchmark: stage kernels forked from the runner's warm process against kernels started fresh, in the same process.

Two measurements, each taken both ways, alternating (fresh, warm, fresh, warm, ...) so that a change in the machine's
load falls on both:
- `prologue`: a notebook doing what every stage does before its work (import numpy, pandas, matplotlib, scikit-learn,
  LightGBM and the library, draw one figure), executed through the runner's kernel options;
- `smoke run`: `run_pipeline` on the smoke profile, every stage (one warm process per run, as `macd-nb run` does).

CPU is the whole machine's (/proc/stat), because a forked kernel is the warm process's child, not this one's: run it
on an otherwise idle machine. Wall and CPU per kernel (prologue) and per run (smoke) are medians.

    python benchmarks/bench_kernels.py            # 8 prologues and 2 smoke runs each way

Writes benchmarks/results/kernels.json.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nbformat
from nbclient import NotebookClient

from macd_nb.core.config import library_versions, profile_config
from macd_nb.pipeline.kernels import FRESH_KERNELS, WarmKernels
from macd_nb.pipeline.runner import run_pipeline
from macd_nb.pipeline.stage_run import stage_kernel_options

REPO = Path(__file__).resolve().parents[1]
PROLOGUE = ("import numpy, pandas, sklearn.linear_model, lightgbm, matplotlib.pyplot as plt\n"
            "import macd_nb.core.prepare, macd_nb.models.protocol\n"
            "plt.plot([0, 1]); plt.show()")


def machine_cpu_s() -> float:
    "CPU seconds used by the whole machine since boot (user, nice, system, irq, softirq, steal)."
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measured(call) -> tuple[float, float]:
    "(wall s, machine CPU s) of `call()`."
    wall, cpu = time.perf_counter(), machine_cpu_s()
    call()
    return time.perf_counter() - wall, machine_cpu_s() - cpu


def prologue(warm: WarmKernels | None) -> None:
    "Execute the stage prologue once, in a kernel forked by `warm` or started fresh."
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(PROLOGUE)]
    with tempfile.TemporaryDirectory() as sockets:
        options = stage_kernel_options(Path(sockets), warm)
        client = NotebookClient(nb, kernel_name="python3", **{k: v for k, v in options.items() if k != "extra_arguments"})
        client.extra_arguments = options["extra_arguments"]
        client.execute()
    assert "image/png" in nb.cells[0].outputs[-1]["data"], "the figure did not reach the notebook"


def smoke_run(fresh: bool) -> None:
    "Every stage of the smoke profile through the runner, kernels forked or fresh."
    if fresh: os.environ[FRESH_KERNELS] = "1"
    try:
        with tempfile.TemporaryDirectory() as root:
            ok, _ = run_pipeline(profile_config("smoke"), run_id="bench", runs_root=Path(root) / "runs",
                                 reports_root=Path(root) / "reports")
            assert ok, "the smoke run failed"
    finally:
        os.environ.pop(FRESH_KERNELS, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prologues", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop(FRESH_KERNELS, None)
    warm = WarmKernels()
    prologue(warm), prologue(None)   # the warm process's own start, and the disk cache, are not what is compared
    kernels = {"fresh": [], "warm": []}
    for _ in range(args.prologues):
        kernels["fresh"].append(measured(lambda: prologue(None)))
        kernels["warm"].append(measured(lambda: prologue(warm)))
    warm.close()
    runs = {"fresh": [], "warm": []}
    for _ in range(args.runs):
        runs["fresh"].append(measured(lambda: smoke_run(fresh=True)))
        runs["warm"].append(measured(lambda: smoke_run(fresh=False)))

    def summary(samples):
        wall, cpu = (statistics.median(s[i] for s in samples) for i in (0, 1))
        return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "samples": [[round(w, 2), round(c, 2)] for w, c in samples]}

    result = {
        "prologue": {mode: summary(kernels[mode]) for mode in kernels},
        "smoke_run": {mode: summary(runs[mode]) for mode in runs},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "library_versions": library_versions(),
    }
    for name in ("prologue", "smoke_run"):
        fresh, warm_ = result[name]["fresh"], result[name]["warm"]
        result[name]["cpu_ratio_fresh_over_warm"] = round(fresh["cpu_s"] / warm_["cpu_s"], 2)
        result[name]["wall_ratio_fresh_over_warm"] = round(fresh["wall_s"] / warm_["wall_s"], 2)
        print(f"{name}: fresh {fresh['wall_s']} s wall, {fresh['cpu_s']} s CPU; warm {warm_['wall_s']} s wall, "
              f"{warm_['cpu_s']} s CPU; CPU x{result[name]['cpu_ratio_fresh_over_warm']}, wall x{result[name]['wall_ratio_fresh_over_warm']}")
    out = REPO / "benchmarks" / "results" / "kernels.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
