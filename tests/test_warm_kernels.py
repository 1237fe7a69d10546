"""Stage kernels forked from the runner's warm process: the same numbers as fresh kernels, and none outlives its run."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from macd_nb.pipeline.kernels import FRESH_KERNELS, WarmKernels

MACD_NB = [str(Path(sys.executable).with_name("macd-nb"))]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm kernels fork on Linux only; elsewhere every kernel starts fresh")


def _without_clocks(value):
    "A result's JSON without what a clock wrote (when it was made, how long each step took)."
    if isinstance(value, list): return [_without_clocks(v) for v in value]
    if not isinstance(value, dict): return value
    return {k: _without_clocks(v) for k, v in value.items() if k not in ("created", "timings_s") and not k.endswith("_seconds")}


def _digests(run_dir: Path) -> dict[str, str]:
    "sha256 of every data and OOF file of a run, and of every result without its clock readings, by relative path."
    files = {str(p.relative_to(run_dir)): p.read_bytes() for folder in ("data", "oof") for p in (run_dir / folder).rglob("*") if p.is_file()}
    files |= {str(p.relative_to(run_dir)): json.dumps(_without_clocks(json.loads(p.read_text())), sort_keys=True).encode()
              for p in (run_dir / "results").glob("*.json")}
    return {path: hashlib.sha256(content).hexdigest() for path, content in sorted(files.items())}


def _run(tmp_path: Path, name: str, env: dict) -> tuple[dict[str, str], list[str]]:
    "A two-stage smoke run; its files' digests and the names of the kernel processes it started."
    command = [*MACD_NB, "run", "--profile", "smoke", "--run-id", name, "--only", "prepare", "baseline",
               "--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = set()
    while process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []:
            try: seen.add("fresh" if "ipykernel_launcher" in " ".join(child.cmdline()) else child.name())
            except psutil.Error: pass
        time.sleep(0.05)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    return _digests(tmp_path / "runs" / name), sorted(seen)


def test_forked_kernels_give_the_numbers_fresh_ones_do(tmp_path):
    "The same run with every kernel forked warm and with every kernel fresh: byte-identical data, OOF and results."
    env = {k: v for k, v in os.environ.items() if k != FRESH_KERNELS}
    warm, warm_processes = _run(tmp_path, "warm", env)
    fresh, fresh_processes = _run(tmp_path, "fresh", env | {FRESH_KERNELS: "1"})
    assert "ipykernel" in warm_processes and "macd-nb-warm" in warm_processes and "fresh" not in warm_processes
    assert "fresh" in fresh_processes and "ipykernel" not in fresh_processes
    assert len(warm) >= 5 and {"oof", "results"} <= {path.split("/")[0] for path in warm}
    # a run records its own id in no data, OOF or result file: apart from clock readings the two runs agree byte for byte
    assert warm == fresh, {path for path in warm if warm[path] != fresh.get(path)}


def _kernel(warm: WarmKernels, folder: Path):
    "A kernel forked by `warm` (its connection file is written under `folder`)."
    kernel = warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(folder / "kernel.json")], dict(os.environ), str(folder))
    assert kernel is not None and kernel.poll() is None
    return kernel


def test_closing_the_warm_process_ends_its_kernels(tmp_path):
    warm = WarmKernels(imports=("ipykernel.kernelapp",))
    kernel = _kernel(warm, tmp_path)
    warm.close()
    assert kernel.wait(timeout=10) == -1


def test_a_killed_warm_process_takes_its_kernels_with_it(tmp_path):
    "SIGKILL leaves the warm process no time to clean up: the system ends its kernels (PR_SET_PDEATHSIG)."
    warm = WarmKernels(imports=("ipykernel.kernelapp",))
    kernel = _kernel(warm, tmp_path)
    warm.process.send_signal(signal.SIGKILL)
    assert kernel.wait(timeout=10) == -1
    assert warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k2.json")], dict(os.environ),
                     str(tmp_path)) is None   # a dead warm process forks nothing: the launch starts fresh
    warm.close()


def test_a_launch_with_another_environment_starts_fresh(tmp_path):
    warm = WarmKernels(imports=("ipykernel.kernelapp",))
    kernel = _kernel(warm, tmp_path)
    other = dict(os.environ, OMP_NUM_THREADS="7")   # read by libraries as they load: the warm process's would be wrong
    assert warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k2.json")], other, str(tmp_path)) is None
    warm.close()
    kernel.wait(timeout=10)


def test_a_warm_process_stuck_in_its_imports_is_not_waited_for(tmp_path):
    "A launch waits `timeout` for the warm process, then starts fresh; the stuck process is killed."
    (tmp_path / "stuck_import.py").write_text("import time\ntime.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    warm = WarmKernels(imports=("stuck_import",), timeout=2.0)
    # without the timeout the launch would wait out the import (600 s) and get its kernel
    assert warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k.json")], env, str(tmp_path)) is None
    assert warm.process.wait(timeout=10) == -signal.SIGKILL
    assert warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k2.json")], env, str(tmp_path)) is None
    warm.close()


def test_a_kernel_whose_warm_process_ended_before_it_armed_its_death_signal_exits(tmp_path):
    "The warm process killed right after a fork, before the child set PR_SET_PDEATHSIG: the child sees it and exits at once."
    # the child is told the pid of the process that forked it; here that is not its parent (pid 1 stands for a parent
    # already gone), as it is for a kernel orphaned in that moment. Reading its parent itself, late, it would find init's
    # pid, take it for the warm process and serve forever with nothing to end it
    script = ("import sys; from macd_nb.pipeline.kernels import _become_kernel; "
              f"_become_kernel(1, ['-f', {str(tmp_path / 'kernel.json')!r}], dict(__import__('os').environ), {str(tmp_path)!r})")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try: assert child.wait(timeout=20) == 1 and child.stderr.read() == b""   # exited by the check, not by an error
    finally:
        try: os.killpg(child.pid, signal.SIGKILL)
        except OSError: pass
    assert not (tmp_path / "kernel.json").exists()   # no kernel was started
