"""The pipeline runner: failure and resume, exit codes, the Dask executor, committing a report."""
import json
import shutil
import subprocess

import nbformat
import pandas as pd
import pytest

from macd_nb.models.baseline import run_baseline
from macd_nb.core.stages import Stage, default_nbs_dir
from macd_nb.pipeline.cli import main
from macd_nb.pipeline.report import commit_report
from macd_nb.pipeline.runner import run_pipeline
from macd_nb.core.config import profile_config
from macd_nb.core.prepare import prepare_run


def _flaky_notebook(path, flag):
    "A stage notebook that fails while `flag` exists."
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from pathlib import Path\n"
        f"if Path({str(flag)!r}).exists(): raise RuntimeError('flaky stage failed on purpose')\n"
        "from macd_nb.core.rundir import write_json\n"
        "write_json(Path(run_dir) / 'results' / 'flaky.json', {'ok': True})")
    notebook.cells = [parameters, body]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(notebook, path)


def test_failed_stage_is_reported_and_resume_skips_completed_stages(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    shutil.copy(default_nbs_dir() / "core" / "10_prepare.ipynb", nbs)
    flag = tmp_path / "FAIL"
    flag.write_text("x")
    _flaky_notebook(nbs / "flaky.ipynb", flag)
    stages = [Stage("prepare", "0", "Prepare data", "10_prepare.ipynb"), Stage("flaky", "9", "Flaky", "flaky.ipynb")]
    roots = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports", "nbs_dir": nbs, "stages": stages}

    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="r", **roots)
    assert not ok
    status = (report_dir / "EXECUTION_STATUS.md").read_text()
    assert "Stopped at stage `flaky`" in status and "flaky stage failed on purpose" in status
    assert "macd-nb run --run-id r --resume" in status
    prepared = tmp_path / "runs" / "r" / "data" / "features_1h.parquet"
    assert prepared.exists()                                  # the earlier stage's outputs are intact
    executed_prepare = report_dir / "executed" / "10_prepare.ipynb"
    stamp = (executed_prepare.stat().st_mtime_ns, prepared.stat().st_mtime_ns)

    flag.unlink()                                             # "fix" the cause
    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="r", resume=True, **roots)
    assert ok
    records = {s["name"]: s for s in json.loads((report_dir / "status.json").read_text())["stages"]}
    assert records["prepare"]["status"] == "reused" and records["flaky"]["status"] == "completed"
    assert (executed_prepare.stat().st_mtime_ns, prepared.stat().st_mtime_ns) == stamp   # not re-run

    prepared.write_bytes(b"tampered")                         # a changed output forces the stage to run again
    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="r", resume=True, **roots)
    records = {s["name"]: s for s in json.loads((report_dir / "status.json").read_text())["stages"]}
    assert ok and records["prepare"]["status"] == "completed" and records["flaky"]["status"] == "completed"


def test_a_pipeline_run_leaves_out_the_demonstration_cells(tmp_path):
    "A code cell tagged `demo` runs in the notebook checks and the docs, not in a run: here one that would fail it."
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _flaky_notebook(nbs / "flaky.ipynb", tmp_path / "never")
    notebook = nbformat.read(nbs / "flaky.ipynb", as_version=4)
    demo = nbformat.v4.new_code_cell("raise RuntimeError('a demonstration ran in a pipeline run')")
    demo.metadata["tags"] = ["demo"]
    notebook.cells.insert(1, demo)
    nbformat.write(notebook, nbs / "flaky.ipynb")
    stages = [Stage("flaky", "9", "Flaky", "flaky.ipynb")]
    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="r", runs_root=tmp_path / "runs",
                                  reports_root=tmp_path / "reports", nbs_dir=nbs, stages=stages)
    assert ok, (report_dir / "EXECUTION_STATUS.md").read_text()
    executed = nbformat.read(report_dir / "executed" / "flaky.ipynb", as_version=4)
    assert [c.source for c in executed.cells if "demo" in c.metadata.get("tags", [])] == []
    assert len(executed.cells) == len(notebook.cells)   # papermill's injected parameters in the demonstration's place
    assert executed.metadata.papermill.input_path == str(nbs / "flaky.ipynb")   # the stage's own notebook, not the copy
    assert "a demonstration ran" not in (report_dir / "EXECUTION_STATUS.md").read_text()


def test_cli_exits_non_zero_and_names_the_failed_stage(tmp_path, capsys):
    (tmp_path / "klines").mkdir()
    (tmp_path / "klines" / "BTCUSDT-1h-2024.csv").write_text("open_time,open,high,low,close,volume\n")
    code = main(["run", "--profile", "smoke", "--data", str(tmp_path / "klines"), "--symbols", "BTCUSDT", "--only", "prepare",
                 "--run-id", "bad", "--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")])
    assert code == 1
    status = (tmp_path / "reports" / "bad" / "EXECUTION_STATUS.md").read_text()
    assert "Stopped at stage `prepare`" in status and "BTCUSDT-1h-2024.csv: no data rows" in status
    out = capsys.readouterr().out      # the cause on the terminal too, not only in the status file
    assert "run FAILED" in out and "stage prepare failed: DataError:" in out and "BTCUSDT-1h-2024.csv: no data rows" in out


def test_a_stage_that_writes_behind_the_writers_back_fails(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(
        "from pathlib import Path\n(Path(run_dir) / 'results').mkdir(exist_ok=True)\n"
        "(Path(run_dir) / 'results' / 'sneaky.json').write_text('{}')")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(notebook, nbs / "sneaky.ipynb")
    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="r", runs_root=tmp_path / "runs", reports_root=tmp_path / "reports",
                                  nbs_dir=nbs, stages=[Stage("sneaky", "9", "Sneaky", "sneaky.ipynb")])
    status = json.loads((report_dir / "status.json").read_text())["stages"][0]
    assert not ok and "wrote ['results/sneaky.json'] without recording their sha256" in status["cause"]
    # a manifest is only ever written from a run directory that verifies, and no report is made of unverified files
    assert not (tmp_path / "runs" / "r" / "MANIFEST.json").exists() and not (report_dir / "TRAINING_REPORT.md").exists()
    assert "no report: " in capsys.readouterr().err and "sneaky.json" in status["cause"]


def test_dask_executor_gives_the_same_oof_as_local_processes(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    config = profile_config("smoke")
    prepare_run(config, tmp_path)
    local = run_baseline(config, tmp_path)
    local_oof = pd.read_parquet(tmp_path / "oof" / "baseline_1h.parquet")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = run_baseline(config.replace(executor=f"dask://{cluster.scheduler_address.removeprefix('tcp://')}"), tmp_path)
    dask_oof = pd.read_parquet(tmp_path / "oof" / "baseline_1h.parquet")
    pd.testing.assert_frame_equal(local_oof, dask_oof)
    assert local.metrics["oof_auc"] == on_dask.metrics["oof_auc"]


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_commit_report_commits_only_reports_and_respects_the_cap(tmp_path):
    repo = tmp_path / "repo"
    report = repo / "reports" / "r1"
    (report / "executed").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    (report / "TRAINING_REPORT.md").write_text("# report\n")
    (report / "executed" / "a.ipynb").write_text("{}")
    (report / "fig.png").write_bytes(b"\x89PNG")
    (report / "model.txt").write_text("not a report file")
    (repo / "other.txt").write_text("staged elsewhere")
    _git(repo, "add", "other.txt")

    committed, why = commit_report(report, "Training report r1", max_total_bytes=10)
    assert not committed and "over the 10-byte cap" in why
    committed, why = commit_report(report, "Training report r1")
    assert committed, why
    files = _git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(files) == ["reports/r1/TRAINING_REPORT.md", "reports/r1/executed/a.ipynb", "reports/r1/fig.png"]
    assert _git(repo, "log", "-1", "--format=%s") .strip() == "Training report r1"


def test_a_stage_that_does_not_write_its_declared_files_fails(tmp_path):
    "The registry's `writes` is checked after a stage runs: completing without its files is a failure, named."
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("from pathlib import Path\n(Path(run_dir) / 'written.json').write_text('{}')")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(notebook, nbs / "quiet.ipynb")
    stages = [Stage("quiet", "9", "Quiet", "quiet.ipynb", ("written.json", "results/promised_{tf}.json"))]
    ok, report_dir = run_pipeline(profile_config("smoke"), run_id="q", runs_root=tmp_path / "runs",
                                  reports_root=tmp_path / "reports", nbs_dir=nbs, stages=stages)
    status = (report_dir / "EXECUTION_STATUS.md").read_text()
    assert not ok and "ran but did not write ['results/promised_1h.json']" in status


def _prepare_only(tmp_path):
    "A finished one-stage run (prepare) of the smoke profile, and the roots it lives in."
    roots = {"runs_root": tmp_path / "runs", "reports_root": tmp_path / "reports"}
    ok, _ = run_pipeline(profile_config("smoke"), run_id="r", only=["prepare"], **roots)
    assert ok
    return roots, tmp_path / "runs" / "r"


def test_arguments_are_checked_before_anything_is_written(tmp_path):
    roots, run_dir = _prepare_only(tmp_path)
    saved = (run_dir / "config.json").read_bytes()
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(profile_config("smoke", seed=7), run_id="r", resume=True, only=["prepar"], **roots)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_pipeline(profile_config("smoke", seed=7), run_id="r", only=["prepare"], **roots)
    assert (run_dir / "config.json").read_bytes() == saved


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    from macd_nb.pipeline.runner import RunInUse, run_lock
    roots, run_dir = _prepare_only(tmp_path)
    with run_lock(run_dir):
        with pytest.raises(RunInUse, match=r"is being written by pid \d+ on"):
            run_pipeline(profile_config("smoke"), run_id="r", resume=True, **roots)


def test_resume_with_changed_inputs_is_refused_with_the_difference(tmp_path, capsys):
    roots, run_dir = _prepare_only(tmp_path)
    with pytest.raises(ValueError, match="seed: 0 -> 7"):
        run_pipeline(profile_config("smoke", seed=7), run_id="r", resume=True, check_resume_config=True, **roots)
    code = main(["run", "--run-id", "r", "--resume", "--profile", "quick", "--runs-root", str(roots["runs_root"]),
                 "--reports-root", str(roots["reports_root"])])
    assert code == 2 and "n_bars" in capsys.readouterr().err     # the quick profile's other settings, named
    ok, _ = run_pipeline(profile_config("smoke", seed=7), run_id="r", resume=True, **roots)   # inputs not given again: its own
    assert ok
