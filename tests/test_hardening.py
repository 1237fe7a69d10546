"""Hardening: every bad input a named refusal or a counted repair, artifacts verified on every read, one writer per
run directory, and no process of a killed run left behind.

The bad-input table runs the real command line (`macd-nb run|report|promote|...` through `main`) next to an existing
run and checks, for each case, the exit code, that the message names the file/key/row and the problem, and that no
file of the existing run changed. The crash, corruption and concurrency tests run `macd-nb` as real subprocesses.
"""
import gzip
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import tree_digest
from macd_nb.core.config import read_config
from macd_nb.core.klines import example_klines, write_kline_dump
from macd_nb.core.rundir import CorruptArtifact, RunPaths, corrupt_files, read_json
from macd_nb.pipeline.cli import main

MACD_NB = [str(Path(sys.executable).parent / "macd-nb")]   # the console script of this environment


def flip_byte(path: Path, at: int = -10) -> None:
    "Flip one bit of one byte, as a failing disk or a careless editor might."
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def good_klines(folder: Path, n_rows: int = 2000) -> Path:
    "Two symbols of clean Binance 1h dumps (BTCUSDT the target, ETHUSDT for the cross-asset features)."
    folder.mkdir(parents=True, exist_ok=True)
    for seed, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        write_kline_dump(example_klines(n_rows, seed=seed), folder / f"{symbol}-1h-2024.csv")
    return folder


# --- the bad-input table ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "An existing finished run (`base`, prepare stage on the smoke profile) and the folders the cases write into."
    root = tmp_path_factory.mktemp("world")
    os.environ["MACD_NB_CACHE"] = str(root / "cache")       # inherited by the stage kernels: no shared cache
    roots = ["--runs-root", str(root / "runs"), "--reports-root", str(root / "reports")]
    assert main(["run", "--profile", "smoke", "--run-id", "base", "--only", "prepare", *roots]) == 0
    good_klines(root / "good")
    return root, roots


def _yaml(text):
    def make(root):
        (root / "bad.yaml").write_text(text)
        return ["--config", str(root / "bad.yaml")]
    return make


def _klines(damage):
    "A copy of the clean data set with `damage(folder)` applied; the run uses it through --data."
    def make(root):
        folder = root / f"data_{damage.__name__}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(root / "good", folder)
        damage(folder)
        return ["--data", str(folder), "--symbols", "BTCUSDT,ETHUSDT"]
    return make


def truncated_gz(folder):
    path = folder / "BTCUSDT-1h-2024.csv"
    folder.joinpath("BTCUSDT-1h-2024.csv.gz").write_bytes(gzip.compress(path.read_bytes())[:-400])
    path.unlink()


def truncated_zip(folder):
    path = folder / "ETHUSDT-1h-2024.csv"
    write_kline_dump(example_klines(2000, seed=1), folder / "ETHUSDT-1h-2024.zip")
    path.unlink()
    zipped = folder / "ETHUSDT-1h-2024.zip"
    zipped.write_bytes(zipped.read_bytes()[:-300])


def header_only(folder):
    (folder / "ETHUSDT-1h-2024.csv").write_text("open_time,open,high,low,close,volume\n")


def set_cell(path: Path, line: int, column: int, value: str) -> None:
    "Overwrite one cell of a headerless CSV (line and column from 0)."
    lines = path.read_text().splitlines()
    fields = lines[line].split(",")
    fields[column] = value
    lines[line] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def text_in_price(folder): set_cell(folder / "BTCUSDT-1h-2024.csv", 41, 2, "12.5x")
def negative_price(folder): set_cell(folder / "BTCUSDT-1h-2024.csv", 99, 4, "-3.0")


def missing_target(folder):
    (folder / "BTCUSDT-1h-2024.csv").unlink()


def conflicting_duplicate(folder):
    rows = example_klines(2000, seed=0)
    clash = rows.iloc[[500]].assign(close=rows["close"].iloc[500] + 1.0)
    write_kline_dump(clash, folder / "BTCUSDT-1h-2024-extra.csv")


def off_grid_time(folder):
    rows = example_klines(2000, seed=0)
    rows.loc[700, "open_time"] += 1000 * 60 * 17
    write_kline_dump(rows, folder / "BTCUSDT-1h-2024.csv")


def empty_folder(folder):
    for path in folder.iterdir(): path.unlink()


def second_writer(root):
    "The existing run's lock is held (a run in progress) while the case runs."
    from macd_nb.pipeline.runner import run_lock
    return run_lock(root / "runs" / "base")


def corrupt_copy(relative):
    "A copy `broken` of the existing run with one byte flipped in `relative`; the case acts on the copy."
    def make(root):
        shutil.rmtree(root / "runs" / "broken", ignore_errors=True)
        shutil.copytree(root / "runs" / "base", root / "runs" / "broken", ignore=shutil.ignore_patterns(".lock"))
        flip_byte(root / "runs" / "broken" / relative)
        return []
    return make


RESUME_BASE = ["run", "--run-id", "base", "--resume"]
NEW = ["run", "--profile", "smoke", "--only", "prepare"]

# id, argv (the case's run id is appended for new runs), setup -> extra argv, exit code, fragments the output must hold
CASES = [
    # command-line arguments
    ("unknown-stage", [*RESUME_BASE, "--only", "prepar"], None, 2, ["unknown stage", "prepar"]),
    ("new-run-into-existing-id", ["run", "--profile", "smoke", "--run-id", "base"], None, 2, ["already holds a run", "base"]),
    ("resume-missing-run", ["run", "--run-id", "nosuchrun", "--resume"], None, 2, ["no run", "nosuchrun", "to resume"]),
    ("resume-changed-profile", [*RESUME_BASE, "--profile", "quick"], None, 2, ["other settings", "n_bars"]),
    ("resume-changed-seed-file", RESUME_BASE, _yaml("seed: 7\n"), 2, ["other settings", "seed: 0 -> 7"]),
    ("unknown-profile", ["run", "--profile", "huge"], None, 2, ["--profile", "invalid choice", "huge"]),
    ("unknown-device", ["run", "--device", "tpu"], None, 2, ["--device", "invalid choice", "tpu"]),
    ("data-path-missing", [*NEW, "--data", "/nonexistent/klines"], None, 2, ["--data", "/nonexistent/klines", "no such file"]),
    ("bad-executor", [*NEW, "--executor", "ray://x"], None, 2, ["executor='ray://x'", "dask://HOST:PORT"]),
    ("bad-timeframe", [*NEW, "--timeframes", "1h,2h"], None, 2, ["timeframes ['2h']"]),
    ("runs-root-is-a-file", [*NEW, "--runs-root", "{root}/afile"], None, 2, ["afile"]),
    ("second-writer", RESUME_BASE, second_writer, 2, ["is being written by pid", "base"]),
    # configuration files
    ("config-missing", NEW, lambda root: ["--config", str(root / "absent.yaml")], 2, ["absent.yaml"]),
    ("config-type-int", NEW, _yaml("n_folds: six\n"), 2, ["bad.yaml", "n_folds='six'", "int"]),
    ("config-type-bool", NEW, _yaml("expanding: 'no'\n"), 2, ["bad.yaml", "expanding='no'", "bool"]),
    ("config-unknown-key", NEW, _yaml("n_fold: 3\n"), 2, ["bad.yaml", "n_fold", "n_folds"]),
    ("config-invalid-yaml", NEW, _yaml("n_folds: 3\n  seed: [1,\n"), 2, ["bad.yaml line", "column", "invalid YAML"]),
    ("config-invalid-json", NEW, lambda root: (root / "bad.json").write_text('{"n_folds": 3,}') and ["--config", str(root / "bad.json")],
     2, ["bad.json line 1 column", "invalid JSON"]),
    ("config-not-a-mapping", NEW, _yaml("- n_folds\n- 3\n"), 2, ["bad.yaml", "expected a mapping"]),
    ("config-out-of-range", NEW, _yaml("n_folds: -2\n"), 2, ["n_folds"]),
    # data files: refused inside the prepare stage, the cause printed on the terminal
    ("data-truncated-gz", NEW, _klines(truncated_gz), 1, ["stage prepare failed", "BTCUSDT-1h-2024.csv.gz", "truncated or corrupt"]),
    ("data-truncated-zip", NEW, _klines(truncated_zip), 1, ["stage prepare failed", "ETHUSDT-1h-2024.zip", "truncated or corrupt"]),
    ("data-header-only", NEW, _klines(header_only), 1, ["ETHUSDT-1h-2024.csv", "no data rows"]),
    ("data-text-in-price", NEW, _klines(text_in_price), 1, ["BTCUSDT-1h-2024.csv row 42", "column high", "'12.5x'"]),
    ("data-negative-price", NEW, _klines(negative_price), 1, ["BTCUSDT-1h-2024.csv row 100", "non-positive price"]),
    ("data-missing-target", NEW, _klines(missing_target), 1, ["no bar files for ['BTCUSDT']"]),
    ("data-conflicting-duplicate", NEW, _klines(conflicting_duplicate), 1, ["BTCUSDT-1h-2024-extra.csv row 1", "same open_time with different values"]),
    ("data-off-grid-time", NEW, _klines(off_grid_time), 1, ["BTCUSDT-1h-2024.csv row 701"]),
    ("data-empty-folder", NEW, _klines(empty_folder), 1, ["no bar files"]),
    ("data-date-range-empty", NEW, lambda root: [*_klines(lambda f: None)(root), "--config", str(_write(root / "late.yaml", "start: '2031-01-01'\nend: '2031-12-31'\n"))],
     1, ["none of its", "2031-01-01"]),
    # run directories and artifacts
    ("report-missing-run", ["report", "nosuchrun"], None, 2, ["nosuchrun", "holds no run"]),
    ("report-corrupt-result", ["report", "broken"], corrupt_copy("results/prepare.json"), 2, ["results/prepare.json: corrupt", "--resume"]),
    ("report-corrupt-features", ["report", "broken"], corrupt_copy("data/features_1h.parquet"), 2, ["data/features_1h.parquet: corrupt"]),
    ("resume-corrupt-config", ["run", "--run-id", "broken", "--resume"], corrupt_copy("config.json"), 2,
     ["config.json: corrupt or edited", "cannot be resumed", "another --run-id"]),
    ("promote-without-stacking", ["promote", "{root}/runs/base", "--alias", "1h", "--registry", "{root}/registry"], None, 2,
     ["no stacked model for 1h"]),
    ("promote-bad-alias", ["promote", "{root}/runs/base", "--alias", "7m", "--registry", "{root}/registry"], None, 2, ["alias '7m'"]),
    ("rollback-never-moved", ["rollback", "--alias", "1h", "--registry", "{root}/registry"], None, 2, ["never moved"]),
    ("deploy-missing-tarball", ["deploy", "{root}/absent.tar.gz", "--to", "{root}/registry"], None, 2, ["absent.tar.gz"]),
    ("deploy-truncated-tarball", ["deploy", "{root}/cut.tar.gz", "--to", "{root}/registry"],
     lambda root: (root / "cut.tar.gz").write_bytes(gzip.compress(b"x" * 5000)[:-50]) and [], 2, ["cut.tar.gz"]),
    # --- second round: names confined to their folders
    ("run-id-dotdot", [*NEW, "--run-id", ".."], None, 2, ["--run-id '..'", "not a plain name"]),
    ("run-id-dot", [*NEW, "--run-id", "."], None, 2, ["--run-id '.'", "not a plain name"]),
    ("run-id-absolute", [*NEW, "--run-id", "{root}/elsewhere"], None, 2, ["/elsewhere'", "not a plain name"]),
    ("run-id-inside-a-run", [*NEW, "--run-id", "base/results"], None, 2, ["--run-id 'base/results'", "not a plain name"]),
    ("reports-root-inside-a-run", [*NEW, "--runs-root", "{root}/runs", "--reports-root", "{root}/runs/base/results"], None, 2,
     ["--reports-root", "lies inside the run", "runs/base"]),
    ("runs-root-inside-a-run", [*NEW, "--runs-root", "{root}/runs/base", "--reports-root", "{root}/reports"], None, 2,
     ["--runs-root", "lies inside the run"]),
    ("runs-and-reports-one-folder", [*NEW, "--runs-root", "{root}/both", "--reports-root", "{root}/both"], None, 2,
     ["in one folder"]),
    ("report-run-id-dotdot", ["report", "..", "--runs-root", "{root}/runs/base", "--reports-root", "{root}/reports"], None, 2,
     ["run id '..'", "not a plain name"]),
    ("package-out-inside-another-run", ["package", "{root}/runs/base", "--out", "{root}/runs/other/package"],
     lambda root: _write(_folder(root / "runs" / "other") / "config.json", "{}") and [], 2, ["--out", "lies inside the run", "runs/other"]),
    ("deploy-into-a-run", ["deploy", "{root}/absent.tar.gz", "--to", "{root}/runs/base/models"], None, 2, ["--to", "lies inside the run"]),
    ("registry-inside-a-run", ["aliases", "--registry", "{root}/runs/base/registry"], None, 2, ["--registry", "lies inside the run"]),
    ("alias-a-path", ["health", "--alias", "../../etc", "--registry", "{root}/registry"], None, 2, ["--alias '../../etc'", "not a plain name"]),
    ("fallback-a-path", ["shadow", "--source", "replay:{root}/good", "--db", "{root}/log.db", "--fallback", "lgb,../x"], None, 2,
     ["--fallback model '../x'"]),
    ("fetch-symbol-empty", ["fetch", "--symbols", "BTCUSDT,,ETHUSDT", "--start", "2024-01-01", "--data-dir", "{root}/fetched"], None, 2,
     ["--symbols: symbol ''", "not a plain name"]),
    # --- second round: the chain of custody
    ("package-flipped-result", ["package", "{root}/runs/broken"], corrupt_copy("results/prepare.json"), 2,
     ["results/prepare.json: corrupt", "--run-id broken --resume"]),
    # a copy with one declared file (or a folder's ledger) deleted: corrupt_copy makes the copy, the flipped byte goes with the file
    ("package-deleted-result", ["package", "{root}/runs/broken"],
     lambda root: (corrupt_copy("results/prepare.json")(root), (root / "runs/broken/results/prepare.json").unlink()) and [], 2,
     ["results/prepare.json: listed in", "MANIFEST.json but missing", "--run-id broken --resume"]),
    ("report-deleted-features", ["report", "broken"],
     lambda root: (corrupt_copy("data/features_1h.parquet")(root), (root / "runs/broken/data/features_1h.parquet").unlink()) and [],
     2, ["data/features_1h.parquet: listed in", "MANIFEST.json but missing", "--resume"]),
    ("report-deleted-ledger", ["report", "broken"],
     lambda root: (corrupt_copy("results/.sha256.jsonl")(root), (root / "runs/broken/results/.sha256.jsonl").unlink()) and [], 2,
     ["results/.sha256.jsonl is missing", "results/prepare.json"]),
    # --- second round: bad ticks and gaps
    ("data-100x-print", NEW, _klines(lambda f: set_cell(f / "BTCUSDT-1h-2024.csv", 1000, 4, str(
        100 * float((f / "BTCUSDT-1h-2024.csv").read_text().splitlines()[1000].split(",")[4])))), 0,
     ["run completed", "data: BTCUSDT: 1 implausible bar(s), bad_bars: exclude", "BTCUSDT-1h-2024.csv row 1001", "high 6260 is 99.5x away",
      "rows excluded around implausible bars"]),
    ("data-low-1e-12", NEW, _klines(lambda f: set_cell(f / "BTCUSDT-1h-2024.csv", 1200, 3, "1e-12")), 0,
     ["run completed", "data: BTCUSDT: 1 implausible bar(s)", "BTCUSDT-1h-2024.csv row 1201", "low 1e-12"]),
    ("data-bad-print-refused", NEW, lambda root: [*_klines(lambda f: set_cell(f / "BTCUSDT-1h-2024.csv", 1200, 3, "1e-12"))(root),
     "--config", str(_write(root / "refuse.yaml", "bad_bars: refuse\n"))],
     1, ["stage prepare failed", "BTCUSDT-1h-2024.csv row 1201 (open_time", "low 1e-12", "bad_bars: exclude", "fix the file"]),
    ("data-six-month-gap", NEW, _klines(lambda f: [write_kline_dump(example_klines(2000, seed=seed).pipe(lambda r: r.assign(
        open_time=r["open_time"] + (r.index >= 1000) * 183 * 86_400_000)), f / f"{symbol}-1h-2024.csv")
        for seed, symbol in enumerate(("BTCUSDT", "ETHUSDT"))]), 0,
     ["run completed", "rows excluded whose lookback or label spans a gap longer than 24 h"]),
    # --- second round: settings checked for meaning
    ("config-horizons-empty", NEW, _yaml("horizons: []\n"), 2, ["bad.yaml: horizons=[] must list at least one label horizon"]),
    ("config-bootstrap-zero", NEW, _yaml("bootstrap_samples: 0\n"), 2, ["bad.yaml: bootstrap_samples=0 must be >= 100"]),
    ("config-date-not-a-date", NEW, _yaml('start: "2024-13-45"\n'), 2, ["bad.yaml: start='2024-13-45' is not a date", "YYYY-MM-DD"]),
    ("config-date-unquoted", NEW, _yaml("start: 2024-13-45\n"), 2, ["bad.yaml: start='2024-13-45' is not a date"]),
    ("config-learning-rate-negative", NEW, _yaml("gbm_learning_rate: -0.05\n"), 2, ["bad.yaml: gbm_learning_rate=-0.05 must be in (0, 1]"]),
    ("config-too-many-folds", NEW, _yaml("n_folds: 300\n"), 2,
     ["bad.yaml: at 1h, 2880 bars (n_bars=2880)", "n_folds=300", "would hold 4 bars, fewer than 12; use n_folds <= 122"]),
    ("config-too-many-folds-for-dates", NEW, lambda root: [*_klines(lambda f: None)(root), "--config",
     str(_write(root / "folds.yaml", "start: '2024-01-01'\nend: '2024-03-01'\nn_folds: 300\n"))], 2,
     ["folds.yaml: at 1h, 1464 bars (at most: start='2024-01-01' to end='2024-03-01')", "use n_folds <= 15"]),
    ("config-unknown-feature-input", NEW, _yaml("feature_inputs: [bogus]\n"), 2, ["bad.yaml: feature_inputs: unknown 'bogus'", "taker_buy_base"]),
    ("config-unknown-base-model", NEW, _yaml("stacking_base_models: [lgb, xgboost]\n"), 2, ["bad.yaml", "'xgboost' (did you mean 'xgb'?)"]),
    ("config-start-after-end", NEW, _yaml("start: '2024-03-01'\nend: '2024-02-01'\n"), 2, ["bad.yaml: start='2024-03-01' is after end='2024-02-01'"]),
    ("config-duplicate-key", NEW, _yaml("n_folds: 3\nseed: 1\nn_folds: 4\n"), 2, ["bad.yaml line 3", "'n_folds' is set twice, on lines 1 and 3"]),
    ("args-empty-symbol", [*NEW, "--symbols", "BTCUSDT,,ETHUSDT"], None, 2, ["symbols=['BTCUSDT', '', 'ETHUSDT']", "--symbols BTCUSDT,ETHUSDT"]),
    ("args-lower-case-symbols-timeframes-coarse-first", [*NEW, "--symbols", "btcusdt,ethusdt", "--timeframes", "4h,1h"], None, 0,
     ["symbols=['btcusdt', 'ethusdt'] read as ['BTCUSDT', 'ETHUSDT']", "timeframes=['4h', '1h'] read as ['1h', '4h'] (finest first", "run completed"]),
    ("data-utf16", NEW, _klines(lambda f: (f / "BTCUSDT-1h-2024.csv").write_text((f / "BTCUSDT-1h-2024.csv").read_text(), encoding="utf-16")), 1,
     ["stage prepare failed", "BTCUSDT-1h-2024.csv: it holds UTF-16 text, not UTF-8; save it as UTF-8"]),
    ("data-gzip-named-csv", NEW, _klines(lambda f: (f / "ETHUSDT-1h-2024.csv").write_bytes(gzip.compress((f / "ETHUSDT-1h-2024.csv").read_bytes()))), 1,
     ["stage prepare failed", "ETHUSDT-1h-2024.csv: its bytes are gzip-compressed, not CSV text; rename it ETHUSDT-1h-2024.csv.gz"]),
    # --- second round: interrupts and the messages around a run
    ("resume-without-run-id", ["run", "--resume"], None, 2, ["--resume needs --run-id", "runs under"]),
    ("report-corrupt-config", ["report", "broken"], corrupt_copy("config.json"), 2, ["config.json: corrupt", "restore it"]),
    # --- issue 20: gates and stacking inputs
    ("stacking-input-not-trained", ["run", "--profile", "smoke", "--only", "prepare", "lgb", "stacking"],
     _yaml("stacking_base_models: [lgb, lstm]\n"), 2, ["stacking_base_models=['lgb', 'lstm'] names ['lstm']", "add their stages to --only"]),
    ("stacking-without-base-stage", ["run", "--profile", "smoke", "--only", "prepare", "stacking"], None, 2,
     ["stacking_base_models", "trains no base model"]),
    ("resume-changed-setting-a-completed-stage-read", RESUME_BASE, _yaml("n_folds: 5\n"), 2,
     ["n_folds: 6 -> 5", "stage(s) ['prepare'] that read them have completed"]),
    ("config-gate-out-of-range", NEW, _yaml("stacking_gain_ci_above: 2.0\n"), 2, ["bad.yaml: stacking_gain_ci_above=2.0 must be in [-1, 1]"]),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_table_has_enough_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, argv, setup, code, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, capsys, case, argv, setup, code, fragments):
    root, roots = world
    (root / "afile").touch()
    before = tree_digest(root / "runs" / "base", root / "reports" / "base")
    argv = [a.replace("{root}", str(root)) for a in argv]
    is_run = argv[0] == "run"
    if is_run and "--run-id" not in argv and "--resume" not in argv: argv += ["--run-id", case]
    extra = []
    if case == "second-writer":
        holder = setup(root)
        holder.__enter__()
    elif setup is not None:
        extra = setup(root) or []
    try:
        with pytest.raises(SystemExit) if case in ("unknown-profile", "unknown-device") else _nothing() as caught:
            result = main(argv + extra + (roots if argv[0] in ("run", "report") and "--runs-root" not in argv else []))
    finally:
        if case == "second-writer": holder.__exit__(None, None, None)
    if caught is not None: result = caught.value.code
    out = capsys.readouterr()
    said = out.out + out.err
    assert result == code, said
    for fragment in fragments: assert fragment in said, f"{fragment!r} not in: {said}"
    assert tree_digest(root / "runs" / "base", root / "reports" / "base") == before, "an existing run's file changed"


class _nothing:
    def __enter__(self): return None
    def __exit__(self, *exc): return False


def test_repairs_are_counted_in_the_report(world, capsys):
    "Ordinary dirt is repaired and counted, and the count reaches the training report's data section."
    root, roots = world
    folder = root / "data_repairs"
    shutil.copytree(root / "good", folder)
    rows = example_klines(2000, seed=0)
    write_kline_dump(rows.iloc[::-1], folder / "BTCUSDT-1h-2024.csv")                  # unsorted
    write_kline_dump(rows.iloc[100:110], folder / "BTCUSDT-1h-2024-dup.csv")            # exact duplicates
    assert main([*NEW, "--run-id", "repairs", "--data", str(folder), "--symbols", "BTCUSDT,ETHUSDT", *roots]) == 0
    report = (root / "reports" / "repairs" / "TRAINING_REPORT.md").read_text()
    counted = read_json(root / "runs" / "repairs" / "results" / "prepare.json")["data_report"]["files"]["BTCUSDT"]
    assert counted["duplicates_dropped"] == 10 and counted["unsorted_rows"] > 0
    row = next(line for line in report.splitlines() if line.startswith("| BTCUSDT |")).split(" | ")
    assert row[1:3] == [str(counted["rows_read"]), "2000"] and row[5:7] == ["10", str(counted["unsorted_rows"])]


# --- corruption: the next reader refuses the file by name ----------------------------------------------------------

RUN = "three_bases"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run with every kind of artifact: OOF parquet, result JSON, LightGBM, XGBoost, torch, config (the
    cached run tests/test_export.py exports: its three base models stacked)."""
    root = tmp_path_factory.mktemp("smoke")
    from macd_nb.pipeline.examples import example_run
    return example_run(root / "runs" / RUN, "smoke", ["prepare", "lgb", "xgb", "lstm", "stacking"],
                       stacking_base_models=["lgb", "xgb", "lstm"])


def _read_lgb(run_dir):
    from macd_nb.export.onnx import served_models
    return served_models(RunPaths(run_dir), "1h")


def _read_oof(run_dir):
    from macd_nb.models.stacking import load_base_oof
    return load_base_oof(run_dir, "1h", ["lgb", "xgb"])


def _read_lstm(run_dir):
    from macd_nb.models.lstm import LSTM
    return LSTM.load(RunPaths(run_dir), "lstm", "1h")


@pytest.mark.parametrize("relative, reader", [
    ("oof/lgb_1h.parquet", _read_oof),
    ("results/lgb_1h.json", lambda run_dir: read_json(run_dir / "results" / "lgb_1h.json")),
    ("models/lgb_1h.txt", _read_lgb),
    ("models/xgb_1h.json", _read_lgb),
    ("models/lstm_1h.pt", _read_lstm),
    ("config.json", read_config),
    ("data/features_1h.parquet", lambda run_dir: __import__("macd_nb.core.prepare", fromlist=["x"]).load_table(run_dir, "1h")),
], ids=["oof-parquet", "result-json", "lightgbm", "xgboost", "torch", "config", "features"])
def test_a_flipped_byte_is_refused_by_the_next_reader(smoke_run, tmp_path, relative, reader):
    run_dir = tmp_path / RUN
    shutil.copytree(smoke_run, run_dir)
    reader(run_dir)                                    # intact: reads fine
    flip_byte(run_dir / relative)
    with pytest.raises(CorruptArtifact, match=f"{relative}: corrupt"):
        reader(run_dir)
    assert any(relative in problem for problem in corrupt_files(run_dir))


def test_a_write_cut_short_by_a_crash_leaves_nothing_the_readers_trip_on(smoke_run, tmp_path):
    "SIGKILL between a write and its move leaves the hidden temporary file; the summary and the report pass over it."
    from macd_nb.export.summary import summary_markdown
    from macd_nb.pipeline.report import headline_message
    run_dir = tmp_path / RUN
    shutil.copytree(smoke_run, run_dir)
    half = run_dir / "results" / ".lgb_1h.0123456789ab.tmp.json"   # write_atomically's name for it
    half.write_text('{"model": "lgb", "metr')
    assert half in list((run_dir / "results").glob("*.json"))          # what the readers globbed before: it would be read
    assert half not in RunPaths(run_dir).result_files() and RunPaths(run_dir).result_file("lgb", "1h") in RunPaths(run_dir).result_files()
    assert "lgb" in summary_markdown(run_dir, RUN) and "lgb 1h: OOF AUC" in headline_message(run_dir, RUN)


def test_resume_names_the_corrupt_file_and_rewrites_it(tmp_path):
    "A corrupt output is named, its stage re-run, and the rewritten file is byte-identical to the original."
    roots = ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    assert main(["run", "--profile", "smoke", "--run-id", "r", "--only", "prepare", *roots]) == 0
    features = tmp_path / "runs" / "r" / "data" / "features_1h.parquet"
    original = features.read_bytes()
    flip_byte(features)
    done = subprocess.run([*MACD_NB, "run", "--run-id", "r", "--resume", *roots], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "re-running stage prepare" in done.stderr and "data/features_1h.parquet changed" in done.stderr
    assert features.read_bytes() == original and corrupt_files(tmp_path / "runs" / "r") == []


# --- crash and concurrency --------------------------------------------------------------------------------------

def _stage_running(report_dir: Path, stage: str) -> bool:
    try: stages = read_json(report_dir / "status.json")["stages"]
    except (OSError, ValueError): return False
    return any(s["name"] == stage and s["status"] == "running" for s in stages)


def _descendants(pid: int) -> list[psutil.Process]:
    try: return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess: return []


def _command_line(process: psutil.Process) -> str:
    try: return " ".join(process.cmdline())
    except psutil.Error: return ""     # gone, or a zombie


def _is_kernel(process: psutil.Process) -> bool:
    "A kernel started fresh (`python -m ipykernel_launcher`) or forked from the runner's warm process (named so)."
    try: return "ipykernel_launcher" in _command_line(process) or process.name() == "ipykernel"
    except psutil.Error: return False


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE: alive.append(f"{p.pid} {_command_line(p)[:100]}")
        except psutil.Error: pass
    return alive


def _alive_after(processes: list[psutil.Process], seconds: float = 5.0) -> list[str]:
    "Those of `processes` still alive `seconds` from now ([] as soon as none is: polled, not slept)."
    deadline = time.monotonic() + seconds
    while (alive := _alive(processes)) and time.monotonic() < deadline: time.sleep(0.1)
    return alive


def _fold_workers(folder: Path) -> str:
    "A settings file that gives the smoke profile (one process) two fold workers, so that a kill can be seen to reach them."
    (folder / "two_fold_workers.yaml").write_text("n_jobs: 2\n")
    return str(folder / "two_fold_workers.yaml")


def _kill_when(command: list[str], report_dir: Path, stage: str, *, want_workers: bool,
               timeout: float = 240) -> tuple[list[psutil.Process], list[psutil.Process]]:
    "Start `command`, SIGKILL it once `stage` runs (and fold workers exist, when wanted); its processes and fold workers then."
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, family, workers = time.monotonic() + timeout, [], []
    while time.monotonic() < deadline and process.poll() is None:
        family = _descendants(process.pid)
        workers = [p for p in family if "popen_loky" in _command_line(p)]
        if _stage_running(report_dir, stage) and (workers or not want_workers): break
        time.sleep(0.2)
    assert process.poll() is None, f"the run ended before stage {stage} could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return family, workers


def test_sigkill_at_several_points_then_resume(tmp_path):
    roots = ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    run_dir, report_dir = tmp_path / "runs" / "c", tmp_path / "reports" / "c"
    command = [*MACD_NB, "run", "--profile", "smoke", "--config", _fold_workers(tmp_path), "--run-id", "c", "--only", "prepare",
               "baseline", "lgb", "xgb", *roots]
    resume = [*MACD_NB, "run", "--run-id", "c", "--resume", *roots]
    kept = {}
    for stage, want_workers in (("prepare", False), ("lgb", True), ("xgb", False)):
        # the workers as seen before the kill: read again now, a worker already gone or a zombie has no command line
        family, workers = _kill_when(command, report_dir, stage, want_workers=want_workers)
        if want_workers: assert workers and set(workers) <= set(family)
        assert _alive_after(family) == [], f"processes of the run killed in {stage} outlived it by 5 s"
        # what the completed stages wrote must come through every later resume unchanged
        stages = read_json(report_dir / "status.json")["stages"]
        for s in stages:
            if s["status"] in ("completed", "reused"):
                kept.update({path: (run_dir / path).read_bytes() for path in s["outputs"] if path.startswith(("data/", "oof/", "results/", "models/"))})
        command = resume
    done = subprocess.run(resume, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = read_json(report_dir / "status.json")["stages"]
    assert [s["status"] for s in stages].count("failed") == 0 and len(stages) == 4
    assert len(kept) >= 3 and {path: (run_dir / path).read_bytes() for path in kept} == kept
    assert corrupt_files(run_dir) == []


def test_two_runs_with_one_id_started_together(tmp_path):
    roots = ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    command = [*MACD_NB, "run", "--profile", "smoke", "--run-id", "same", "--only", "prepare", "baseline", *roots]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    outcomes = sorted([(p.wait(), p.communicate()) for p in (first, second)], key=lambda o: o[0])
    (code_a, (out_a, err_a)), (code_b, (out_b, err_b)) = outcomes
    assert (code_a, code_b) == (0, 2), (err_a, err_b)
    # the lock's holder names its pid a moment after it locks: the loser may read "by pid N" or "by another process"
    assert "is being written by" in err_b or "already holds a run" in err_b
    run_dir = tmp_path / "runs" / "same"
    stages = read_json(tmp_path / "reports" / "same" / "status.json")["stages"]
    assert [s["status"] for s in stages] == ["completed", "completed"]
    assert (run_dir / "results" / "baseline_1h.json").exists() and corrupt_files(run_dir) == []


# --- interrupts: Ctrl-C and SIGTERM stop a run in one line, and it resumes --------------------------------------------

@pytest.mark.parametrize("signum, to_group, stage, when", [(signal.SIGINT, True, "lgb", "2 s in"),
                                                           (signal.SIGTERM, False, "prepare", "kernel started")],
                         ids=["ctrl-c-to-the-terminal-group-in-lgb", "sigterm-to-the-runner-as-the-kernel-starts"])
def test_an_interrupt_stops_in_one_line_and_resumes(tmp_path, signum, to_group, stage, when):
    """Ctrl-C reaches every process of the terminal's group (kernel and fold workers too), well inside a stage; SIGTERM
    only the runner, the moment its kernel process exists (still importing, before it binds its sockets)."""
    roots = ["--runs-root", str(tmp_path / "my runs"), "--reports-root", str(tmp_path / "my reports")]   # a space: quoted
    report_dir = tmp_path / "my reports" / "i"
    command = [*MACD_NB, "run", "--profile", "smoke", "--config", _fold_workers(tmp_path), "--run-id", "i", "--only",
               "prepare", "lgb", *roots]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, family = time.monotonic() + 240, []
    while time.monotonic() < deadline and not _stage_running(report_dir, stage): time.sleep(0.2)
    if when == "2 s in": time.sleep(2)
    while when == "kernel started" and time.monotonic() < deadline and not any(map(_is_kernel, _descendants(process.pid))):
        time.sleep(0.02)
    family = _descendants(process.pid)
    (os.killpg if to_group else os.kill)(process.pid, signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, err
    said = [line for line in err.splitlines() if line.startswith("macd-nb run:")]
    assert len(said) == 1 and f"stopped by {signal.Signals(signum).name} during stage {stage}" in said[0], err
    assert "'" + str(tmp_path / "my runs") + "'" in said[0], "the resume command quotes a root with a space"
    assert "Traceback" not in err and "IPKernelApp" not in err and "KeyboardInterrupt" not in err, err
    assert _alive_after(family) == [], "processes of the interrupted run outlived it by 5 s"
    assert [s["status"] for s in read_json(report_dir / "status.json")["stages"]].count("interrupted") == 1
    done = subprocess.run(said[0].split("Resume with: ")[1], shell=True, capture_output=True, text=True,
                          env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert f"re-running stage {stage}" in done.stderr and "it was interrupted" in done.stderr
    assert "IPKernelApp" not in done.stderr and "KeyboardInterrupt" not in done.stderr   # a normal run is quiet too
    assert corrupt_files(tmp_path / "my runs" / "i") == []


def test_after_an_interrupt_the_command_ends_even_when_a_library_thread_would_hold_its_exit():
    """A kernel client caught mid-start holds the interpreter's exit for good (seen in CI: the one line written, the
    process alive 30 s later; its `__del__` waits in zmq's context term). A thread that never ends stands in for it
    here: the console script ends at once after an interrupt, and only then."""
    script = textwrap.dedent("""
        import sys, threading, time
        import macd_nb.pipeline.cli as cli
        threading.Thread(target=time.sleep, args=(600,)).start()   # not a daemon: a normal exit would wait for it
        cli.main = lambda: int(sys.argv[1])
        try: cli.console()
        finally: print("console returned", flush=True)""")
    ended = subprocess.run([sys.executable, "-c", script, str(128 + signal.SIGTERM)], capture_output=True, text=True, timeout=60)
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr
    assert "console returned" not in ended.stdout   # it left at once, without unwinding into the wait for the thread
    normal = subprocess.Popen([sys.executable, "-c", script, "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:   # any other exit code returns from the console script normally, and the interpreter then waits for the thread
        assert normal.stdout.readline() == "console returned\n", normal.stderr.read()
        with pytest.raises(subprocess.TimeoutExpired): normal.wait(timeout=3)
    finally:
        normal.kill(), normal.wait()


def test_resume_repairs_a_deleted_ledger_and_never_forgets_a_deleted_file(tmp_path):
    "A folder's ledger deleted: --resume re-runs its writer. A declared file deleted, then a run of other stages: still named."
    roots = ["--runs-root", str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports")]
    run_dir = tmp_path / "runs" / "l"
    assert main(["run", "--profile", "smoke", "--run-id", "l", "--only", "prepare", "baseline", *roots]) == 0
    (run_dir / "oof" / ".sha256.jsonl").unlink()
    done = subprocess.run([*MACD_NB, "run", "--run-id", "l", "--resume", *roots], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "re-running stage baseline" in done.stderr and "cannot be verified" in done.stderr
    assert corrupt_files(run_dir) == []
    (run_dir / "oof" / "baseline_1h.parquet").unlink()
    only_prepare = subprocess.run([*MACD_NB, "run", "--run-id", "l", "--resume", "--only", "prepare", *roots],
                                  capture_output=True, text=True)
    assert only_prepare.returncode == 1 and "oof/baseline_1h.parquet: listed in" in only_prepare.stderr, only_prepare.stderr
    assert "oof/baseline_1h.parquet" in read_json(run_dir / "MANIFEST.json")["files"]   # still declared
    done = subprocess.run([*MACD_NB, "run", "--run-id", "l", "--resume", *roots], capture_output=True, text=True)
    assert done.returncode == 0 and corrupt_files(run_dir) == [], done.stderr
