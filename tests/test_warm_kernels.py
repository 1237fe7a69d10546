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

from macd_nb.core.config import profile_config
from macd_nb.pipeline import kernels
from macd_nb.pipeline.kernels import FRESH_KERNELS, WarmKernels
from macd_nb.pipeline.runner import run_pipeline

MACD_NB = [str(Path(sys.executable).with_name("macd-nb"))]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm kernels fork on Linux only; elsewhere every kernel starts fresh")


def _without_clocks(value):
    "A result's JSON without what a clock wrote (when it was made, how long each step took)."
    if isinstance(value, list): return [_without_clocks(v) for v in value]
    if not isinstance(value, dict): return value
    return {k: _without_clocks(v) for k, v in value.items() if k not in ("created", "timings_s", "seconds", "seconds_per_epoch")
            and not k.endswith("_seconds")}


def _digests(run_dir: Path) -> dict[str, str]:
    "sha256 of every data and OOF file of a run, and of every result without its clock readings, by relative path."
    files = {str(p.relative_to(run_dir)): p.read_bytes() for folder in ("data", "oof") for p in (run_dir / folder).rglob("*") if p.is_file()}
    files |= {str(p.relative_to(run_dir)): json.dumps(_without_clocks(json.loads(p.read_text())), sort_keys=True).encode()
              for p in (run_dir / "results").glob("*.json")}
    return {path: hashlib.sha256(content).hexdigest() for path, content in sorted(files.items())}


def _run(tmp_path: Path, name: str, env: dict) -> tuple[dict[str, str], list[str]]:
    "A three-stage smoke run (the LSTM's kernel forked after the warm process imported torch); its files' digests and the names of the kernel processes it started."
    command = [*MACD_NB, "run", "--profile", "smoke", "--run-id", name, "--only", "prepare", "baseline", "lstm",
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


def _maps_torch(pid: int) -> bool:
    "Whether process `pid` has loaded torch's library."
    try: return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError: return False


def test_later_imports_wait_for_the_first_kernel_and_reach_the_next(tmp_path):
    "torch is imported by the warm process after it forked the first kernel, and the kernels forked after that have it."
    warm = WarmKernels(imports=("ipykernel.kernelapp",), later=("torch",))
    first = _kernel(warm, tmp_path)
    assert not _maps_torch(first.pid)                 # its launch did not wait for torch
    end = time.monotonic() + 60
    while not _maps_torch(warm.process.pid) and time.monotonic() < end: time.sleep(0.1)
    assert _maps_torch(warm.process.pid)
    second = warm.fork([sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k2.json")], dict(os.environ), str(tmp_path))
    assert _maps_torch(second.pid)
    warm.close()
    assert first.wait(timeout=10) == second.wait(timeout=10) == -1


def _forks(monkeypatch) -> list:
    "What each launch of this process's runs got from its warm process (a kernel, or None: started fresh)."
    seen = []
    def fork(self, *args, **kw):
        seen.append((self.process and self.process.pid, kernel := original(self, *args, **kw)))
        if kernel is not None: seen[-1] = (self.process.pid, kernel)
        return kernel
    original = WarmKernels.fork
    monkeypatch.setattr(WarmKernels, "fork", fork)
    return seen


def test_a_process_that_runs_again_keeps_its_warm_process(tmp_path, monkeypatch):
    "One-stage runs: the second in a process forks its kernel, as every run after it does from the same warm process;"
    " another environment gets a new warm process once the old one's kernels have ended."
    monkeypatch.delenv(FRESH_KERNELS, raising=False)
    seen, config = _forks(monkeypatch), profile_config("smoke")
    def run(name):
        ok, _ = run_pipeline(config, run_id=name, runs_root=tmp_path / "runs", reports_root=tmp_path / "reports", only=["prepare"])
        assert ok
    run("a"), run("b"), run("c")
    (warm_b, kernel_b), (warm_c, kernel_c) = seen[-2:]   # the first run of a process has none if it has one stage
    assert kernel_b is not None and kernel_c is not None and warm_b == warm_c == kernels._PROCESS_WARM.process.pid
    monkeypatch.setenv("MACD_NB_TEST_OTHER_ENV", "1")
    run("d")
    warm_d, kernel_d = seen[-1]
    assert kernel_d is not None and warm_d != warm_c and not psutil.pid_exists(warm_c)


def _pidfds(pid: int) -> int:
    "How many pidfds process `pid` holds open."
    folder = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fd) == "anon_inode:[pidfd]" for fd in folder.iterdir() if fd.is_symlink())


def test_the_warm_process_forgets_the_kernels_that_ended(tmp_path):
    "It keeps a pidfd for each kernel still running and drops those of the ones that ended: the pid of an ended kernel"
    " may be another process's by now, and closing the warm process must not kill that process's group."
    warm = WarmKernels(imports=("ipykernel.kernelapp",))
    ended = [_kernel(warm, tmp_path / str(i)) for i in range(3) if (tmp_path / str(i)).mkdir() is None]
    for kernel in ended:
        kernel.kill()
        end = time.monotonic() + 10   # gone, every thread of it (its leader may show as a zombie a moment before)
        while Path(f"/proc/{kernel.pid}").exists() and time.monotonic() < end: time.sleep(0.02)
    assert _pidfds(warm.process.pid) == 3
    (tmp_path / "last").mkdir()
    last = _kernel(warm, tmp_path / "last")   # a launch drops what it knows of the three ended kernels first
    assert _pidfds(warm.process.pid) == 1
    warm.close()
    assert last.wait(timeout=10) == -1


def test_closing_after_the_warm_process_died_with_a_request_unread():
    "A request still buffered for a warm process that died must not stop `close` (it runs at exit)."
    warm = WarmKernels()
    warm.process = subprocess.Popen([sys.executable, "-c", "pass"])
    read_end, write_end = os.pipe()
    warm._requests, warm._replies = os.fdopen(write_end, "w"), open(os.devnull)
    os.close(read_end)                      # the warm process is gone: nothing reads its requests
    warm._requests.write("launch\n")        # buffered: close() flushes it into the broken pipe
    warm.close()
    assert warm.process is None
