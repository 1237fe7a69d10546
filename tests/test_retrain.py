"""Issue 20, parts 2 and 3: `macd-nb retrain` through the real command line on a synthetic market with a planted change
of regime. A champion trained before the change degrades after it; the monitor says so; the challenger is compared on
the bars the champion never saw and promoted by compare-and-swap; a market without a change gets a recorded decision
either way; a second retrain of the alias is refused; SIGKILL in training or in the promotion leaves the champion
served, and the rerun decides once."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.prepare import load_table
from macd_nb.core.registry import audit_log, read_alias
from macd_nb.serve.log import PredictionLog
from macd_nb.serve.predictor import MLPredictor

CLI = str(Path(sys.executable).with_name("macd-nb"))
CHANGE = "2021-05-01"   # the planted signal reverses here: the champion's data (smoke: 2,880 bars) ends just before
STAGES = ["prepare", "lgb", "xgb", "stacking", "export"]   # the CPU tree stages: the champion's plan, the challenger's default
ENV = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}


def macd_nb(cwd: Path, *args: str, env: dict | None = None, check_exit: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([CLI, *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=900)
    if check_exit is not None: assert done.returncode == check_exit, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    return done


def outcome(done: subprocess.CompletedProcess) -> dict:
    "The one JSON line `retrain` prints."
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout[-2000:]
    return json.loads(lines[0])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> Path:
    "A smoke run of the tree stages on a market whose signal reverses after its last bar, promoted to alias 1h."
    world = tmp_path_factory.mktemp("retrain")
    write(world / "champion.yaml", f"profile: smoke\nsynthetic_regime_change: '{CHANGE}'\nbootstrap_samples: 100\n")
    write(world / "changed.yaml", "n_bars: 5040\n")                                  # 90 days past the change
    write(world / "unchanged.yaml", "n_bars: 4320\nsynthetic_regime_change: null\n")  # 60 more days, no change
    macd_nb(world, "run", "--config", "champion.yaml", "--only", *STAGES, "--run-id", "champ", check_exit=0)
    macd_nb(world, "promote", "runs/champ", "--alias", "1h", "--registry", "registry", "--why", "first", check_exit=0)
    return world


def fresh(champion: Path, name: str) -> Path:
    "A copy of the world (runs, reports, registry with the champion at version 1) for one test."
    target = champion.parent / name
    shutil.copytree(champion, target)
    return target


def log_champion(world: Path, db: Path, table: pd.DataFrame, bars: pd.DatetimeIndex) -> None:
    "Log the champion's stacked answers on `bars` of `table`, with their outcomes, as `macd-nb shadow` would."
    predictor = MLPredictor("1h", world / "registry")
    log = PredictionLog(db)
    position = pd.Series(np.arange(len(table)), index=table.index)
    for bar in bars:
        out = predictor.predict(table.iloc[position[bar]:position[bar] + 1])
        features = table.loc[bar, list(predictor.metadata(predictor.meta["inputs"][0])["features"])]
        log.record(symbol="BTCUSDT", timeframe="1h", bar_time=bar, alias="1h", model_version=out["version"], run=out["run"],
                   p_up=out["p_up"], models=out["models"], fallback=None, latency_ms=1.0, features=features, horizon=1)
    log.set_outcomes("BTCUSDT", "1h", [(bar, 1, float(table.loc[bar, "fwd_ret_1"])) for bar in bars])
    log.close()


def test_a_change_of_regime_is_seen_by_the_monitor_and_the_challenger_is_promoted(champion):
    world = fresh(champion, "regime")
    # a log too short for any limit (drift limits apply from 100 logged rows, AUC limits from 100 and 500): no retrain
    # (on this smoke champion, 45 days of training bars, 300 later bars already cross the drift limits: slow daily
    # features wander out of so short a window, and the monitor says so)
    before, _ = load_table(world / "runs" / "champ", "1h")
    log_champion(world, world / "quiet.sqlite", before, before.index[-51:-1])
    done = macd_nb(world, "retrain", "--alias", "1h", "--registry", "registry", "--if-recommended", "--db", "quiet.sqlite",
                   "--config", "changed.yaml", check_exit=11)
    assert outcome(done)["decision"] == "not_recommended" and "no monitor limit crossed" in outcome(done)["why"]
    assert not (world / "runs").joinpath("chall").exists() and read_alias(world / "registry", "1h")["version"] == 1

    write(world / "probe.yaml", (world / "champion.yaml").read_text() + (world / "changed.yaml").read_text())
    macd_nb(world, "run", "--config", "probe.yaml", "--only", "prepare", "--run-id", "probe", check_exit=0)   # the new bars
    after, _ = load_table(world / "runs" / "probe", "1h")
    assert len(after) > len(before)
    served = after.index[after.index >= pd.Timestamp(CHANGE, tz="UTC")][:700]   # what shadow mode logged after the change
    log_champion(world, world / "shadow.sqlite", after, served)
    done = macd_nb(world, "retrain", "--alias", "1h", "--registry", "registry", "--if-recommended", "--db", "shadow.sqlite",
                   "--config", "changed.yaml", "--run-id", "chall", check_exit=0)
    result = outcome(done)
    assert result["decision"] == "promoted" and result["recommended_because"], result
    comparison = result["comparison"]
    # the champion degraded after the change (its own OOF AUC was above 0.5); the challenger is compared on the same bars,
    # all after the champion's window, and is better with an interval above zero
    assert comparison["auc"]["champion"] < 0.5 < comparison["auc"]["challenger"], comparison
    assert comparison["gain"]["ci95"][0] > 0 and comparison["n_bars"] >= 1000, comparison
    assert pd.Timestamp(comparison["first_bar"]) > pd.Timestamp(result["champion"]["trained_until"])
    unseen = served[served > pd.Timestamp(result["champion"]["trained_until"])]   # the log's bars the champion never saw
    assert comparison["champion_sources"]["from_log"] == len(unseen) > 600 and comparison["champion_sources"]["from_onnx"] > 0
    pointer = read_alias(world / "registry", "1h")
    assert (pointer["version"], pointer["run"]) == (2, "chall")
    (move,) = [e for e in audit_log(world / "registry") if e.get("to_run") == "chall"]
    assert move["retrain"] == "chall" and move["comparison"]["gain"]["ci95"][0] > 0 and "AUC gain" in move["why"]
    report = world / result["report"]
    assert report.exists() and (report.parent / "retrain_auc.png").stat().st_size > 0 and "promoted" in report.read_text()
    assert MLPredictor("1h", world / "registry").pointer["run"] == "chall"   # what a server loads next
    assert not (world / "registry" / "retrain" / "1h.json").exists()        # nothing left undecided


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(): return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({process.returncode}): {process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def _stage_started(world: Path, run_id: str, stage: str) -> bool:
    status = world / "reports" / run_id / "status.json"
    try: records = json.loads(status.read_text())["stages"]
    except (OSError, ValueError, KeyError): return False
    return any(r["name"] == stage and r["status"] in ("running", "completed") for r in records)


def test_without_a_change_the_decision_is_recorded_and_a_second_retrain_is_refused(champion):
    world = fresh(champion, "steady")
    first = subprocess.Popen([CLI, "retrain", "--alias", "1h", "--registry", "registry", "--config", "unchanged.yaml",
                              "--run-id", "chall"], cwd=world, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for(lambda: (world / "registry" / "retrain" / "1h.json").exists(), 120, "the first retrain's state", first)
    second = macd_nb(world, "retrain", "--alias", "1h", "--registry", "registry", "--config", "unchanged.yaml",
                     "--run-id", "other", check_exit=2)
    assert outcome(second)["decision"] == "refused" and "another retrain of alias 1h is at work" in outcome(second)["why"]
    stdout, stderr = first.communicate(timeout=900)
    result = json.loads(stdout.strip().splitlines()[-1])
    assert first.returncode == {"promoted": 0, "kept": 10}[result["decision"]], (result, stderr[-2000:])
    assert result["comparison"]["n_bars"] >= 500 and not (world / "runs" / "other").exists()
    entries = [e for e in audit_log(world / "registry") if e.get("retrain") == "chall"]
    assert len(entries) == 1 and entries[0]["comparison"] == {k: result["comparison"][k] for k in ("n_bars", "auc", "gain")} | {
        "after_cost_log_growth_difference": result["comparison"]["after_cost_log_growth"]["difference"]}
    version = read_alias(world / "registry", "1h")["version"]
    assert version == (2 if result["decision"] == "promoted" else 1)


def test_sigkill_in_training_and_in_the_promotion_leaves_the_champion_served_and_the_rerun_decides_once(champion):
    world = fresh(champion, "killed")
    command = [CLI, "retrain", "--alias", "1h", "--registry", "registry", "--config", "changed.yaml", "--run-id", "chall"]
    process = subprocess.Popen(command, cwd=world, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    _wait_for(lambda: _stage_started(world, "chall", "lgb"), 300, "the challenger's lgb stage", process)
    os.killpg(process.pid, signal.SIGKILL)   # the retrain and its stage kernel, mid-training
    process.wait(timeout=60)
    health = macd_nb(world, "health", "--alias", "1h", "--registry", "registry", check_exit=0)
    assert json.loads(health.stdout)["status"] == "healthy" and read_alias(world / "registry", "1h")["run"] == "champ"

    killed = macd_nb(world, *command[1:], env=ENV | {"MACD_NB_RETRAIN_FAULT": "audited"})   # resumes, dies mid-move
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert read_alias(world / "registry", "1h")["run"] == "champ"           # the switch never happened
    assert MLPredictor("1h", world / "registry").pointer["version"] == 1    # and the champion loads
    macd_nb(world, "health", "--alias", "1h", "--registry", "registry", check_exit=0)

    done = macd_nb(world, *command[1:], check_exit=0)
    result = outcome(done)
    assert result["decision"] == "promoted" and "finished" in result, result
    assert read_alias(world / "registry", "1h")["run"] == "chall"
    moves = [e for e in audit_log(world / "registry") if e.get("to_run") == "chall" or e.get("retrain") == "chall"]
    assert len(moves) == 1, moves   # decided once
    status = json.loads((world / "reports" / "chall" / "status.json").read_text())["stages"]
    assert [s["name"] for s in status] == STAGES and {s["status"] for s in status} == {"reused", "completed"}   # resumed


def test_the_weekly_timer_runs_a_retrain_the_command_line_accepts():
    "deploy/: the service's command parses as `macd-nb retrain --if-recommended`; kept and not-recommended exit as success."
    import configparser
    import shlex
    from macd_nb.pipeline.cli import build_parser
    from macd_nb.pipeline.retrain import RETRAIN_EXIT
    deploy = Path(__file__).parents[1] / "deploy"
    units = {name: configparser.ConfigParser(strict=False, interpolation=None) for name in ("service", "timer")}
    for kind, parser in units.items(): parser.read(deploy / f"macd-nb-retrain.{kind}")
    service, timer = units["service"]["Service"], units["timer"]["Timer"]
    executable, *arguments = shlex.split(service["ExecStart"])
    assert executable.endswith("/macd-nb")
    args = build_parser().parse_args(arguments)
    assert args.command == "retrain" and args.if_recommended and args.db and args.alias == "1h"
    assert {int(code) for code in service["SuccessExitStatus"].split()} == {RETRAIN_EXIT["kept"], RETRAIN_EXIT["not_recommended"]}
    assert timer["OnCalendar"].startswith("Mon") and timer["Persistent"] == "true"


def test_fetch_extends_the_kline_files_from_the_oldest_symbols_newest_bar(tmp_path, monkeypatch):
    "`--fetch`: one download from the newest bar the most behind symbol has stored (else the configured start)."
    import macd_nb.serve.binance as binance
    from macd_nb.core.config import profile_config
    from macd_nb.pipeline.retrain import RetrainRefused, fetch_newer_bars
    stored, calls = {"BTCUSDT": 1_700_000_000_000, "ETHUSDT": 1_690_000_000_000}, []
    monkeypatch.setattr(binance, "stored_through", lambda data_dir, symbol, interval: stored.get(symbol))
    monkeypatch.setattr(binance, "fetch_klines", lambda *args, **kwargs: calls.append((args, kwargs)))
    config = profile_config("smoke", data_source=str(tmp_path), symbols=["BTCUSDT", "ETHUSDT"])
    fetch_newer_bars(config)
    assert calls == [((["BTCUSDT", "ETHUSDT"], "1h", "2023-07-22 04:26:40+00:00", None), {"data_dir": str(tmp_path)})]
    fetch_newer_bars(config.replace(symbols=["BTCUSDT", "SOLUSDT"]))   # nothing stored for SOLUSDT: from the start
    assert calls[-1][0][2] == config.data.start
    with pytest.raises(RetrainRefused, match="synthetic"): fetch_newer_bars(profile_config("smoke"))
