"""Serving hardening (issue 19, sections 1-5): every bad input of `shadow`, `monitor`, `health`, `aliases`, `deploy`,
`promote` and `rollback` a one-line refusal through the real command line; bad prints, NaN closes and missing hours
in the replayed market named and counted; arguments checked before anything runs; a restart counting the bars
already logged; and SIGTERM/SIGINT ending `shadow` at once in every state.

The table runs `macd-nb` as a subprocess for each case and checks the exit code, that the message names the file and
what to do, that the registry's files (and its audit log) are byte-identical afterwards, and, where a prediction log
exists, that no row was lost or duplicated and `PRAGMA integrity_check` is ok. Read-only cases hold even when the tests
run as root: the command then runs without CAP_DAC_OVERRIDE, so file modes bind it as they bind everyone else.
"""
import ctypes
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from werkzeug import Response

from conftest import as_klines, tree_digest
from macd_nb.core.config import profile_config
from macd_nb.core.data import load_bars
from macd_nb.core.klines import write_kline_dump
from macd_nb.core.registry import audit_log, promote
from macd_nb.export.package import build_package
from macd_nb.serve.binance import KLINES_PATH

from conftest import SHARED_DATA

MACD_NB = str(Path(sys.executable).parent / "macd-nb")
TAKER_COLUMNS = (8, 9, 10)   # trades, taker_buy_base, taker_buy_quote in a kline row


def rows_of(db: Path) -> list[tuple]:
    "The (symbol, timeframe, bar_time, model_version) keys of a prediction log."
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT symbol, timeframe, bar_time, model_version FROM predictions").fetchall()


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection: return connection.execute("PRAGMA integrity_check").fetchone()[0]


def modes_bind():
    "preexec_fn: as root, give up CAP_DAC_OVERRIDE (and read-search) so that file modes bind this process too."
    if os.geteuid() != 0: return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0: raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


DISK_LIMIT, DISK_BARS = 600_000, 300   # past the first batches of 64 bars, short of all 300


def small_disk():
    "preexec_fn: files may not grow past DISK_LIMIT bytes (a full disk as SQLite sees it)."
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_LIMIT, DISK_LIMIT))


def read_only(*paths: Path) -> None:
    "Take write permission from `paths` (files, and folders with everything inside)."
    for path in paths:
        for p in [*(sorted(path.rglob("*"), reverse=True) if path.is_dir() else []), path]: p.chmod(p.stat().st_mode & ~0o222)


def writable_again(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        try: p.chmod(p.stat().st_mode | 0o200)
        except FileNotFoundError: pass   # SQLite removes its -wal and -shm files when the last connection closes


# --- the served run -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory, deployable_run):
    """A deployable smoke run trained with the taker and trade-count inputs (as `macd-nb run --profile smoke` trains),
    promoted to 1h; its market as kline files; the same with those inputs empty over the last month (as the shared
    real klines are after 2024-07); a package; a prediction log of six bars."""
    root = tmp_path_factory.mktemp("serving")
    os.environ["MACD_NB_CACHE"] = str(root / "cache")
    run_dir, registry, klines, blank = deployable_run(root / "run_s"), root / "registry", root / "klines", root / "klines_no_taker"
    config = profile_config("smoke")
    assert config.data.feature_inputs == ["taker_buy_base", "trades"]   # what the shared run was trained with
    promote(registry, run_dir, "1h", why="test")
    market = load_bars("synthetic", symbols=config.data.symbols, n_bars=config.data.n_bars, seed=config.seed).bars
    klines.mkdir(), blank.mkdir()
    for symbol, bars in market.items(): write_kline_dump(as_klines(bars), klines / f"{symbol}-1h.csv")
    for path in klines.iterdir():   # the target's taker volumes and trade counts empty over its last 720 bars
        lines = path.read_text().splitlines()
        if path.name.startswith("BTCUSDT"):
            for i in range(len(lines) - 720, len(lines)):
                fields = lines[i].split(",")
                for column in TAKER_COLUMNS: fields[column] = ""
                lines[i] = ",".join(fields)
        (blank / path.name).write_text("\n".join(lines) + "\n")
    bars = market["BTCUSDT"].index
    tarball = build_package(run_dir, root / "package")
    good = root / "good.sqlite"
    done = subprocess.run([MACD_NB, "shadow", "--registry", str(registry), "--source", f"replay:{klines}", "--db", str(good),
                           "--start", str(bars[-6])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(rows_of(good)) == 6
    return {"root": root, "run": run_dir, "registry": registry, "klines": klines, "blank": blank, "bars": bars,
            "tarball": tarball, "good": good}


# --- the bad-input table --------------------------------------------------------------------------------------------

def registry_copy(world, case: Path) -> Path:
    shutil.copytree(world["registry"], case / "registry")
    return case / "registry"


def shadow_argv(world, registry: Path, db: Path, *extra, source: str | None = None, bars: int = 3) -> list[str]:
    return ["shadow", "--registry", str(registry), "--source", source or f"replay:{world['klines']}", "--db", str(db),
            "--start", str(world["bars"][-bars]), *extra]


def log_copy(world, case: Path, name: str = "log.sqlite") -> Path:
    shutil.copyfile(world["good"], case / name)
    return case / name


def damage_log(world, case):
    "A copy of the good log with 300 bytes of its second page overwritten."
    db = log_copy(world, case)
    data = bytearray(db.read_bytes())
    data[4096:4396] = b"\xa5" * 300
    db.write_bytes(bytes(data))
    return db


def someone_elses(case: Path) -> Path:
    db = case / "theirs.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY, label TEXT, score REAL)")
        connection.execute("INSERT INTO predictions VALUES (1, 'cat', 0.9)")
    return db


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def not_json(path: Path) -> None: path.write_text(path.read_text()[:-7])


def case_source_lacks_inputs(world, case):
    return shadow_argv(world, world["registry"], case / "log.sqlite", source=f"replay:{world['blank']}")


def case_real_klines_lack_inputs(world, case):
    return ["shadow", "--registry", str(world["registry"]), "--source", f"replay:{SHARED_DATA}", "--db", str(case / "log.sqlite"),
            "--start", "2025-12-01"]


def case_db_folder(world, case): return shadow_argv(world, world["registry"], case)


def case_db_text_file(world, case):
    (case / "notes.txt").write_text("bar,p_up\n2025-01-01,0.5\n" * 50)
    return shadow_argv(world, world["registry"], case / "notes.txt")


def case_db_corrupt(world, case): return shadow_argv(world, world["registry"], damage_log(world, case))
def case_db_someone_elses(world, case): return shadow_argv(world, world["registry"], someone_elses(case))


def case_db_read_only_file(world, case):
    db = log_copy(world, case)
    read_only(db)
    return shadow_argv(world, world["registry"], db, bars=8)


def case_db_read_only_folder(world, case):
    (case / "logs").mkdir()
    db = log_copy(world, case / "logs")
    read_only(case / "logs")
    return shadow_argv(world, world["registry"], db, bars=8)


def case_disk_full(world, case): return shadow_argv(world, world["registry"], case / "log.sqlite", bars=DISK_BARS)


def case_monitor_corrupt(world, case):
    return ["monitor", "--db", str(damage_log(world, case)), "--registry", str(world["registry"]), "--out", str(case / "out")]


def case_monitor_someone_elses(world, case):
    return ["monitor", "--db", str(someone_elses(case)), "--registry", str(world["registry"]), "--out", str(case / "out")]


def case_monitor_read_only_log(world, case):
    (case / "logs").mkdir()
    db = log_copy(world, case / "logs")
    read_only(case / "logs")
    return ["monitor", "--db", str(db), "--registry", str(world["registry"]), "--out", str(case / "out")]


def case_monitor_out_read_only(world, case):
    (case / "out").mkdir()
    read_only(case / "out")
    return ["monitor", "--db", str(log_copy(world, case)), "--registry", str(world["registry"]), "--out", str(case / "out" / "report")]


def case_deploy_read_only(world, case):
    (case / "models").mkdir()
    read_only(case / "models")
    return ["deploy", str(world["tarball"]), "--to", str(case / "models")]


def case_deploy_to_file(world, case):
    (case / "models").write_text("not a folder\n")
    return ["deploy", str(world["tarball"]), "--to", str(case / "models")]


def case_rollback_read_only(world, case):
    registry = registry_copy(world, case)
    promote(registry, world["run"], "1h", why="again")   # version 2: there is something to roll back to
    read_only(registry)
    return ["rollback", "--alias", "1h", "--why", "test", "--registry", str(registry)]


def case_promote_registry_file(world, case):
    (case / "registry").write_text("not a folder\n")
    return ["promote", str(world["run"]), "--alias", "1h", "--registry", str(case / "registry")]


def case_pointer_not_json(command):
    def make(world, case):
        registry = registry_copy(world, case)
        not_json(registry / "aliases" / "1h.json")
        return [command, "--registry", str(registry)]
    return make


def case_pointer_edited(command):
    "The alias moved twice (version 2), then its pointer's version edited to 3, a version the audit log never had."
    def make(world, case):
        registry = registry_copy(world, case)
        promote(registry, world["run"], "1h", why="again")
        pointer = registry / "aliases" / "1h.json"
        pointer.write_text(pointer.read_text().replace('"version": 2', '"version": 3'))
        if command == "shadow": return shadow_argv(world, registry, case / "log.sqlite")
        return [command, "--registry", str(registry)] + (["--alias", "1h", "--why", "test"] if command == "rollback" else [])
    return make


def case_pointer_sha_flipped(world, case):
    registry = registry_copy(world, case)
    pointer = registry / "aliases" / "1h.json"
    record = json.loads(pointer.read_text())
    record["sha256"] = record["sha256"][:-1] + ("0" if record["sha256"][-1] != "0" else "1")
    pointer.write_text(json.dumps(record, indent=2))
    return ["health", "--registry", str(registry)]


def case_promote_after_deploy(world, case):
    "deploy a run's package, then promote the run folder it came from: the same run, registered once."
    done = subprocess.run([MACD_NB, "deploy", str(world["tarball"]), "--to", str(case / "registry")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return ["promote", str(world["run"]), "--alias", "1h", "--registry", str(case / "registry"), "--why", "same run"]


def promoted_again(world, case, argv):
    moves = audit_log(case / "registry")
    assert [(m["to_run"], m["to_version"]) for m in moves][-1] == ("run_s", 2), moves
    assert [p.name for p in (case / "registry" / "runs").iterdir() if not p.name.startswith(".")] == ["run_s"]


def case_manifest_not_json(world, case):
    registry = registry_copy(world, case)
    not_json(registry / "runs" / "run_s" / "MANIFEST.json")
    return ["health", "--registry", str(registry)]


def case_damaged(relative: str, command: str):
    "A registry copy with one byte of the served run's `relative` flipped; `command` health or shadow on it."
    def make(world, case):
        registry = registry_copy(world, case)
        flip(registry / "runs" / "run_s" / relative)
        return ["health", "--registry", str(registry)] if command == "health" else shadow_argv(world, registry, case / "log.sqlite")
    return make


def restart_completes(world, case, argv):
    "After the failed write: the rows logged are intact, and the same command without the limit logs every bar once."
    db = case / "log.sqlite"
    assert 0 < len(rows_of(db)) < DISK_BARS and len(rows_of(db)) % 64 == 0 and integrity(db) == "ok"   # whole batches kept
    done = subprocess.run([MACD_NB, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    keys = rows_of(db)
    assert len(keys) == len(set(keys)) == DISK_BARS and integrity(db) == "ok"


def served_by_fallback(model):
    def check(world, case, argv):
        with sqlite3.connect(case / "log.sqlite") as connection:
            fallbacks = [r[0] for r in connection.execute("SELECT fallback FROM predictions")]
        assert len(fallbacks) == 3 and all(f and f"{model} unhealthy" in f for f in fallbacks), fallbacks
    return check


def monitor_written(world, case, argv): assert (case / "out" / "MONITOR.md").stat().st_size > 1000
def nothing_created(world, case, argv): assert not list(case.glob("log.sqlite*"))


# --- 4. inputs: the replayed market, the arguments ------------------------------------------------------------------

def klines_with(world, case, bar: int, edit) -> Path:
    "A copy of the kline files whose target line for bar `bar` (from the end) is `edit(fields)` (None: the line deleted)."
    folder = case / "klines"
    shutil.copytree(world["klines"], folder)
    path = folder / "BTCUSDT-1h.csv"
    lines = path.read_text().splitlines()
    stamp = str(world["bars"][bar].value // 1_000_000)
    i = next(k for k, line in enumerate(lines) if line.startswith(stamp + ","))
    fields = lines[i].split(",")
    changed = edit(fields)
    if changed is None: del lines[i]
    else: lines[i] = ",".join(changed)
    path.write_text("\n".join(lines) + "\n")
    return folder


def spike(fields):   # a 100x print: the high and close of one bar
    close = float(fields[4])
    return [*fields[:2], repr(close * 100), fields[3], repr(close * 100), *fields[5:]]


def case_market(bar: int, edit):
    "shadow over the last 8 bars of a market whose target bar `bar` (from the end) is edited."
    def make(world, case):
        return shadow_argv(world, world["registry"], case / "log.sqlite", source=f"replay:{klines_with(world, case, bar, edit)}", bars=8)
    return make


def skipped_bar(bar: int):
    "The edited bar has no row; every other bar has one; no outcome reaches the bad bar (an outcome return of +-4.6 was logged)."
    def check(world, case, argv):
        with sqlite3.connect(case / "log.sqlite") as connection:
            rows = dict(connection.execute("SELECT bar_time, outcome_return FROM predictions").fetchall())
        assert integrity(case / "log.sqlite") == "ok"
        assert sorted(rows) == sorted(t.isoformat() for t in world["bars"][-8:] if t != world["bars"][bar]), sorted(rows)
        before = world["bars"][bar - 1].isoformat()
        assert rows[before] is None                                           # its outcome is unknown, and said
        assert all(r is None or abs(r) < 0.2 for r in rows.values()), rows
    return check


def case_start_after_data(world, case):
    return ["shadow", "--registry", str(world["registry"]), "--source", f"replay:{world['klines']}", "--db", str(case / "log.sqlite"),
            "--start", str(world["bars"][-1] + pd.Timedelta(days=30))]


def case_end_before_start(world, case):
    return shadow_argv(world, world["registry"], case / "log.sqlite", "--end", str(world["bars"][-20]))


def case_start_not_a_time(world, case):
    return ["shadow", "--registry", str(world["registry"]), "--source", f"replay:{world['klines']}", "--db", str(case / "log.sqlite"),
            "--start", "2025-13-45"]


def case_fallback_typo(world, case): return shadow_argv(world, world["registry"], case / "log.sqlite", "--fallback", "lgb,xbg")
def case_speed_negative(world, case): return shadow_argv(world, world["registry"], case / "log.sqlite", "--speed", "-1")


def case_end_with_binance(world, case):
    return ["shadow", "--registry", str(world["registry"]), "--source", "binance", "--db", str(case / "log.sqlite"),
            "--end", str(world["bars"][-1])]


def case_monitor_alias_moved_back(world, case):
    "The alias moved to version 2 (the same run again): shadow logs the same 6 bars again under it; then the monitor."
    registry = registry_copy(world, case)
    promote(registry, world["run"], "1h", why="back again")
    db = log_copy(world, case)
    done = subprocess.run([MACD_NB, *shadow_argv(world, registry, db, bars=6)], capture_output=True, text=True)
    assert done.returncode == 0 and len(rows_of(db)) == 12, done.stderr
    return ["monitor", "--db", str(db), "--registry", str(registry), "--out", str(case / "out")]


def distinct_bars(world, case, argv):
    summary = json.loads((case / "out" / "monitor.json").read_text())
    assert (summary["n_rows"], summary["n_repeated_rows"]) == (6, 6), summary
    assert "6 rows repeating a bar" in (case / "out" / "MONITOR.md").read_text()


# --- 5. restarts --------------------------------------------------------------------------------------------------

def case_restart(world, case): return shadow_argv(world, world["registry"], log_copy(world, case), bars=8)


def counted_and_timed(world, case, argv):
    "Every bar once; the new rows record the loop's whole time per bar (cycle_ms) beside the decision's (latency_ms)."
    keys = rows_of(case / "log.sqlite")
    assert len(keys) == len(set(keys)) == 8 and integrity(case / "log.sqlite") == "ok"
    with sqlite3.connect(case / "log.sqlite") as connection:
        timed = connection.execute("SELECT latency_ms, cycle_ms FROM predictions ORDER BY bar_time").fetchall()
    assert all(cycle is not None and cycle >= latency for latency, cycle in timed), timed


shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared real data not present at {SHARED_DATA}")
# id, setup(world, case folder) -> argv, exit code, fragments of the output, how it runs, a further check
CASES = [
    # 1. a source that cannot supply what the models read
    ("source-lacks-inputs", case_source_lacks_inputs, 2,
     ["lgb reads taker_buy_base, trades", "xgb reads", "empty after", "feature_inputs: []"], None, nothing_created),
    pytest.param("real-klines-lack-inputs", case_real_klines_lack_inputs, 2,
                 ["taker_buy_base empty after 2024-07", "lgb reads"], None, nothing_created, marks=shared, id="real-klines-lack-inputs"),
    # 3. the prediction log
    ("db-is-a-folder", case_db_folder, 2, ["is a folder", "--db is the log's file"], None, None),
    ("db-is-a-text-file", case_db_text_file, 2, ["notes.txt", "not an SQLite database", "left untouched"], None, None),
    ("db-corrupt", case_db_corrupt, 2, ["log.sqlite", "damaged", "malformed", "move it aside"], None, None),
    ("db-someone-elses-table", case_db_someone_elses, 2, ["theirs.sqlite", "not this project's prediction log", "untouched"], None, None),
    ("db-read-only-file", case_db_read_only_file, 2, ["log.sqlite", "cannot be opened for writing", "writable"], modes_bind, None),
    ("db-read-only-folder", case_db_read_only_folder, 2, ["log.sqlite", "cannot be opened for writing", "-wal"], modes_bind, None),
    ("db-disk-full", case_disk_full, 1, ["log.sqlite: a write failed", "committed before it are kept", "restart"], small_disk,
     restart_completes),
    ("monitor-corrupt-log", case_monitor_corrupt, 2, ["log.sqlite", "damaged"], None, None),
    ("monitor-someone-elses-db", case_monitor_someone_elses, 2, ["theirs.sqlite", "not this project's prediction log"], None, None),
    ("monitor-read-only-log", case_monitor_read_only_log, 0, ["MONITOR.md"], modes_bind, monitor_written),
    ("monitor-out-read-only", case_monitor_out_read_only, 2, ["--out", "cannot write", "Permission denied"], modes_bind, None),
    # 3. the registry
    ("deploy-to-read-only", case_deploy_read_only, 2, ["--to", "models", "Permission denied", "give a folder you can write"], modes_bind, None),
    ("deploy-to-a-file", case_deploy_to_file, 2, ["--to", "models", "is a file, not a folder"], None, None),
    ("rollback-read-only-registry", case_rollback_read_only, 2, ["--registry", "Permission denied"], modes_bind, None),
    ("promote-registry-is-a-file", case_promote_registry_file, 2, ["--registry", "registry", "is a file, not a folder"], None, None),
    ("health-pointer-not-json", case_pointer_not_json("health"), 2, ["aliases/1h.json", "not valid JSON", "restore"], None, None),
    ("aliases-pointer-not-json", case_pointer_not_json("aliases"), 2, ["aliases/1h.json", "not valid JSON", "restore"], None, None),
    ("health-manifest-not-json", case_manifest_not_json, 2, ["MANIFEST.json", "deploy the run's package"], None, None),
    ("health-prepare-damaged", case_damaged("results/prepare.json", "health"), 1,
     ['"status": "unhealthy"', "run: serving_config failed", "prepare.json"], None, None),
    ("shadow-prepare-damaged", case_damaged("results/prepare.json", "shadow"), 2,
     ["cannot be served", "prepare.json", "rollback --alias 1h"], None, None),
    ("shadow-lstm-metadata-damaged", case_damaged("models/lstm_1h.json", "shadow"), 0,
     ["lstm is unhealthy", "predicted 3", "fallback 3"], None, served_by_fallback("lstm")),
    ("shadow-xgb-result-damaged", case_damaged("results/xgb_1h.json", "shadow"), 0,
     ["xgb is unhealthy", "results/xgb_1h.json", "predicted 3", "fallback 3"], None, served_by_fallback("xgb")),
    # 3. the alias pointer must agree with the audit log; a damaged pointer is named as such
    ("health-pointer-version-edited", case_pointer_edited("health"), 2,
     ["aliases/1h.json: the alias pointer is damaged or was edited", "says run run_s version 3", "went to run run_s version 2",
      "restore"], None, None),
    ("aliases-pointer-version-edited", case_pointer_edited("aliases"), 2, ["aliases/1h.json", "version 3", "version 2"], None, None),
    ("rollback-pointer-version-edited", case_pointer_edited("rollback"), 2, ["aliases/1h.json", "damaged or was edited"], None, None),
    ("shadow-pointer-version-edited", case_pointer_edited("shadow"), 2, ["aliases/1h.json", "damaged or was edited"], None,
     nothing_created),
    ("health-pointer-sha-flipped", case_pointer_sha_flipped, 2, ["aliases/1h.json: the alias pointer is damaged", "restore"], None, None),
    ("promote-after-deploy", case_promote_after_deploy, 0, ['"version": 2'], None, promoted_again),
    # 4. the replayed market: a bad print, a NaN close, a missing hour: named, counted, no outcome across them
    ("market-100x-spike", case_market(-4, spike), 0,
     ["not predicted: BTCUSDT", "implausible bar: high", "away from the median", "skipped 1 (implausible 1)",
      "outcome of BTCUSDT 1h", "an implausible bar", "predicted 7", "outcomes_unknown 1"], None, skipped_bar(-4)),
    ("market-nan-close", case_market(-4, lambda f: [*f[:4], "", *f[5:]]), 0,
     ["not predicted: no bar of BTCUSDT", "NaN", "skipped 1 (missing 1)", "missing from the source", "predicted 7",
      "outcomes_unknown 1"], None, skipped_bar(-4)),
    ("market-missing-hour", case_market(-4, lambda f: None), 0,
     ["not predicted: no bar of BTCUSDT", "skipped 1 (missing 1)", "predicted 7", "outcomes_unknown 1"], None, skipped_bar(-4)),
    # 4. arguments checked before anything runs
    ("start-after-the-data", case_start_after_data, 2, ["no bar of BTCUSDT from --start", "the data holds", "give a --start"],
     None, nothing_created),
    ("end-before-start", case_end_before_start, 2, ["--end", "is before --start", "give an --end after --start"], None, nothing_created),
    ("start-not-a-time", case_start_not_a_time, 2, ["--start 2025-13-45", "not a time", "e.g. 2025-12-01"], None, nothing_created),
    ("fallback-typo", case_fallback_typo, 2, ["--fallback lgb,xbg", "xbg is not a base model", "lgb,xgb,lstm"], None, nothing_created),
    ("speed-negative", case_speed_negative, 2, ["--speed -1.0", "0 (as fast as possible) or more"], None, nothing_created),
    ("end-with-binance", case_end_with_binance, 2, ["--end", "only a replay ends"], None, nothing_created),
    ("monitor-alias-moved-back", case_monitor_alias_moved_back, 0, ["MONITOR.md"], None, distinct_bars),
    # 5. a restart says and counts the bars already logged
    ("restart-counts-logged-bars", case_restart, 0,
     ["the log holds 6 bars of BTCUSDT 1h", "predicted 2, already_logged 6"], None, counted_and_timed),
]


@pytest.mark.parametrize("name, setup, code, fragments, preexec, check",
                         [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_input_is_a_named_refusal(world, tmp_path, name, setup, code, fragments, preexec, check):
    case = tmp_path / name
    case.mkdir()
    try:
        argv = setup(world, case)
        files = [Path(a) for a in argv if a.startswith(str(case)) and Path(a).is_file()]
        before = tree_digest(world["registry"], *case.glob("registry*")), {str(f): f.read_bytes() for f in files}
        logs = {db: rows_of(db) for db in files if db.suffix == ".sqlite" and db.name != "theirs.sqlite" and integrity_ok(db)}
        audit = audit_log(world["registry"])
        done = subprocess.run([MACD_NB, *argv], capture_output=True, text=True, preexec_fn=preexec, timeout=300)
    finally:
        writable_again(case)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    for fragment in fragments: assert fragment in output, (fragment, output)
    if code == 2: assert len(done.stderr.strip().splitlines()) == 1, done.stderr    # one line, no traceback
    assert "Traceback" not in output
    after = tree_digest(world["registry"], *case.glob("registry*"))
    if code != 0: assert after == before[0]                                   # a refusal changes no registry, no audit log
    assert audit_log(world["registry"]) == audit and tree_digest(world["registry"]) == {k: v for k, v in before[0].items()
                                                                                      if k.startswith(str(world["registry"]))}
    for f, data in before[1].items():
        if code == 2: assert Path(f).read_bytes() == data, f"{f} changed on refusal"
    for db, keys in logs.items():                                             # no row lost or duplicated
        now = rows_of(db)
        assert len(now) == len(set(now)) and set(keys) <= set(now) and integrity(db) == "ok"
        if code != 0: assert sorted(now) == sorted(keys)                      # a refusal or failure adds nothing
    if check: check(world, case, argv)


def logged(db: Path) -> int:
    "Rows in a log being written (-1 while its schema is not yet committed)."
    try: return len(rows_of(db))
    except sqlite3.Error: return -1


def integrity_ok(db: Path) -> bool:
    try: return integrity(db) == "ok"
    except sqlite3.DatabaseError: return False


# --- stopping on time -----------------------------------------------------------------------------------------------

class Exchange:
    "GET /api/v3/klines over the served run's market moved so that its newest bar opens this hour; `mode` stalls it."
    def __init__(self, world, mode: str):
        market = load_bars(world["klines"], symbols=profile_config("smoke").data.symbols, timeframe="1h").bars
        shift = pd.Timestamp.now(tz="UTC").floor("1h") - market["BTCUSDT"].index[-1]
        self.market = {s: b.set_axis(b.index + shift) for s, b in market.items()}
        self.mode, self.requests, self.held, self.release = mode, 0, threading.Event(), threading.Event()

    def __call__(self, request):
        self.requests += 1
        if self.mode == "retry-after": return Response("", status=429, headers={"Retry-After": "300"})
        if self.mode == "in-flight":
            self.held.set()
            self.release.wait(60)                          # an answer that takes longer than the client's timeout
        bars = self.market[request.args["symbol"]]
        opened = bars.index.as_unit("ms").asi8
        chosen = (opened >= int(request.args["startTime"])) & (opened <= int(request.args["endTime"]))
        rows = [[int(t), *(repr(float(r[c])) for c in ("open", "high", "low", "close", "volume")), int(t) + 3_599_999,
                 repr(float(r["quote_volume"])), int(r["trades"]), repr(float(r["taker_buy_base"])),
                 repr(float(r["taker_buy_quote"])), "0"] for t, (_, r) in zip(opened[chosen], bars[chosen].iterrows())]
        return Response(json.dumps(rows[:int(request.args["limit"])]), content_type="application/json")


def until(condition, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline and process.poll() is None: time.sleep(0.05)
    assert process.poll() is None and condition(), process.communicate(timeout=30)


@pytest.mark.parametrize("state, signum", [("waiting-for-the-next-hour", signal.SIGTERM), ("waiting-for-the-next-hour", signal.SIGINT),
                                           ("retry-after", signal.SIGTERM), ("in-flight", signal.SIGTERM)])
def test_a_stop_ends_shadow_mode_at_once_in_every_state(world, tmp_path, httpserver, state, signum):
    """`shadow --source binance` against a local exchange: SIGTERM or SIGINT while it waits for the next hour, while it
    waits out a 429's Retry-After of 300 s, or while a request is unanswered: exit 0 within seconds (measured; the bound
    is generous, a test is not a benchmark), the log sound."""
    exchange = Exchange(world, "serve" if state.startswith("waiting") else state)
    httpserver.expect_request(KLINES_PATH).respond_with_handler(exchange)
    db = tmp_path / "live.sqlite"
    process = subprocess.Popen([MACD_NB, "shadow", "--registry", str(world["registry"]), "--source", "binance", "--db", str(db),
                                "--data-dir", str(tmp_path / "data"), "--base-url", httpserver.url_for("/")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if state.startswith("waiting"):   # the newest closed bar logged; then it fetches nothing new until the hour
            until(lambda: db.exists() and logged(db) == 1, process)
            time.sleep(1.0)
        elif state == "retry-after": until(lambda: exchange.requests >= 1, process)
        else: until(exchange.held.is_set, process)
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        exchange.release.set()
        if process.poll() is None: process.kill()
    print(f"\n{state} {signal.Signals(signum).name}: exited {process.returncode} after {took:.2f} s")
    assert process.returncode == 0, err
    assert "shadow: predicted" in out and "Traceback" not in err
    assert took < 10, f"exited {took:.1f} s after {signal.Signals(signum).name}"
    if db.exists(): assert integrity(db) == "ok" and len(rows_of(db)) == len(set(rows_of(db)))
