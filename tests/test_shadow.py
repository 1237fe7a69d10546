"""Shadow mode: a replay through a deployed smoke run, restarts without duplicates or gaps, SIGKILL and SIGTERM, fallback."""
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import as_klines
from macd_nb.core.config import profile_config
from macd_nb.core.data import load_bars
from macd_nb.core.klines import write_kline_dump
from macd_nb.core.prepare import load_table
from macd_nb.core.registry import promote
from macd_nb.core.rundir import read_parquet
from macd_nb.export.package import build_package
from macd_nb.serve.log import PredictionLog
from macd_nb.serve.shadow import replay_source, shadow

from conftest import needs_shared_data

MACD_NB = str(Path(sys.executable).parent / "macd-nb")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, deployable_run):
    """The shared deployable smoke run (LightGBM, XGBoost, LSTM, stacked) trained without the optional kline inputs (the
    real klines lack them after 2024-07), promoted to alias 1h, and its market as kline files."""
    root = tmp_path_factory.mktemp("shadow")
    run_dir, registry, klines = deployable_run(root / "run_s", feature_inputs=[]), root / "registry", root / "klines"
    config = profile_config("smoke")
    promote(registry, run_dir, "1h", why="test")
    klines.mkdir()
    market = load_bars("synthetic", symbols=config.data.symbols, n_bars=config.data.n_bars, seed=config.seed).bars
    for symbol, bars in market.items(): write_kline_dump(as_klines(bars), klines / f"{symbol}-1h.csv")
    return run_dir, registry, klines


def test_replay_predictions_are_the_stages_own(deployed, tmp_path):
    "Replayed bar by bar through live features, the logged probabilities equal the test-period predictions of stage 2."
    run_dir, registry, klines = deployed
    test = read_parquet(run_dir / "test" / "stacking_1h.parquet")
    bars = test.index[-6:]
    symbols = ["BTCUSDT"] + [s for s in profile_config("smoke").data.symbols if s != "BTCUSDT"]
    counts = shadow("1h", registry, lambda config: replay_source(klines, symbols, start=bars[0], end=bars[-1]),
                    tmp_path / "log.sqlite", start=bars[0], say=lambda _: None)
    assert counts == {"predicted": 6, "already_logged": 0, "fallback": 0, "skipped": 0, "outcomes": 5, "outcomes_unknown": 0,
                      "implausible": 0, "skipped_why": {}}
    frame = PredictionLog(tmp_path / "log.sqlite").frame()
    assert list(frame["bar_time"]) == list(bars)
    np.testing.assert_allclose(frame["p_up"], test.loc[bars, "pred"], atol=1e-6)
    assert frame["outcome"].notna().sum() == 5                          # the last bar's horizon has not closed yet
    # run again: nothing new, nothing twice
    again = shadow("1h", registry, lambda config: replay_source(klines, symbols, start=bars[0], end=bars[-1]),
                   tmp_path / "log.sqlite", start=bars[0], say=lambda _: None)
    assert again["predicted"] == 0 and again["already_logged"] == 6 and len(PredictionLog(tmp_path / "log.sqlite").frame()) == 6


def test_a_restart_back_fills_the_bars_missed_while_down(deployed, tmp_path):
    run_dir, registry, klines = deployed
    bars = load_table(run_dir, "1h")[0].index[-8:]
    source = lambda end: lambda config: replay_source(klines, config.data.symbols, end=end)
    first = shadow("1h", registry, source(bars[2]), tmp_path / "log.sqlite", start=bars[0], say=lambda _: None)
    later = shadow("1h", registry, source(bars[7]), tmp_path / "log.sqlite", say=lambda _: None)   # no --start: after the last
    assert first["predicted"] == 3 and later["predicted"] == 5
    assert list(PredictionLog(tmp_path / "log.sqlite").frame()["bar_time"]) == list(bars)


def test_an_unhealthy_model_falls_back_to_the_best_healthy_one(deployed, tmp_path):
    run_dir, registry, klines = deployed
    copy = tmp_path / "registry"
    shutil.copytree(registry, copy)
    onnx = next((copy / "runs").glob("*/models/lgb_1h.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-20])                           # a damaged model file
    bars = read_parquet(run_dir / "test" / "stacking_1h.parquet").index[-3:]
    said = []
    counts = shadow("1h", copy, lambda config: replay_source(klines, config.data.symbols, start=bars[0], end=bars[-1]),
                    tmp_path / "log.sqlite", start=bars[0], order=["lgb", "lstm", "xgb"], say=said.append)
    assert counts["predicted"] == 3 and counts["fallback"] == 3
    assert any("lgb is unhealthy" in line for line in said)
    frame = PredictionLog(tmp_path / "log.sqlite").frame()
    assert frame["fallback"].str.startswith("lstm (lgb unhealthy").all()
    assert (frame["p_up"] == frame["models"].map(lambda m: m["lstm"])).all()


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as connection: return connection.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError: return 0


def test_sigkill_then_restart_gives_exactly_one_prediction_per_bar(deployed, tmp_path):
    "A fast replay commits REPLAY_BATCH (64) bars at a time: killed after the first batch, mid-way through a later one."
    run_dir, registry, klines = deployed
    bars = load_table(run_dir, "1h")[0].index[-200:]
    db = tmp_path / "log.sqlite"
    command = [MACD_NB, "shadow", "--alias", "1h", "--registry", str(registry), "--source", f"replay:{klines}", "--db", str(db),
               "--start", str(bars[0]), "--end", str(bars[-1])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _rows(db) < 10 and time.monotonic() < deadline and process.poll() is None: time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 10 <= _rows(db) < 200
    kept = _rows(db)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"the log holds {kept} bars" in done.stdout and f"already_logged {kept}" in done.stdout, done.stdout   # counted
    log = PredictionLog(db)
    frame = log.frame()
    assert list(frame["bar_time"]) == list(bars)                        # every bar once: no gap, no duplicate
    assert log.integrity() == "ok"


def test_sigterm_stops_cleanly(deployed, tmp_path):
    run_dir, registry, klines = deployed
    bars = load_table(run_dir, "1h")[0].index[-40:]
    db = tmp_path / "log.sqlite"
    process = subprocess.Popen([MACD_NB, "shadow", "--registry", str(registry), "--source", f"replay:{klines}", "--db", str(db),
                                "--start", str(bars[0]), "--end", str(bars[-1]), "--speed", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _rows(db) < 3 and time.monotonic() < deadline and process.poll() is None: time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "shadow: predicted" in out and 3 <= _rows(db) < 40
    assert PredictionLog(db).integrity() == "ok"


@needs_shared_data
def test_thirty_days_of_real_bars_through_a_deployed_package_give_a_monitor_report(deployed, shared_data, tmp_path):
    "The last 30 days of the shared real klines through the smoke run's package, deployed; then `macd-nb monitor`."
    from macd_nb.pipeline.cli import main
    run_dir, _, _ = deployed
    tarball = build_package(run_dir, tmp_path / "package")
    registry = tmp_path / "registry"
    assert main(["deploy", str(tarball), "--to", str(registry)]) == 0
    end = load_bars(shared_data, symbols=["BTCUSDT"], timeframe="1h").bars["BTCUSDT"].index[-1]
    start = end - pd.Timedelta(days=30) + pd.Timedelta(hours=1)
    db = tmp_path / "real.sqlite"
    assert main(["shadow", "--registry", str(registry), "--source", f"replay:{shared_data}", "--db", str(db),
                 "--start", str(start), "--end", str(end)]) == 0
    frame = PredictionLog(db).frame()
    assert len(frame) == 720 and frame["bar_time"].is_unique and frame["outcome_return"].notna().sum() == 719
    assert frame["fallback"].isna().all()
    assert main(["monitor", "--db", str(db), "--registry", str(registry), "--out", str(tmp_path / "monitor")]) == 0
    report = (tmp_path / "monitor" / "MONITOR.md").read_text()
    for section in ("## Realised AUC", "## Calibration", "## Stacked model against each base model", "## Drift", "reliability.png"):
        assert section in report
    assert all((tmp_path / "monitor" / png).stat().st_size > 1000 for png in ("reliability.png", "psi.png", "latency.png"))


def test_the_binance_source_predicts_each_bar_as_it_closes(deployed, tmp_path, httpserver):
    """shadow --source binance against a local exchange (pytest-httpserver) serving the deployed run's market, with a clock
    that moves an hour per cycle: one prediction per newly closed bar, none for the open one, equal to a replay's."""
    import itertools
    import json
    from werkzeug import Response
    from macd_nb.serve.binance import KLINES_PATH
    from macd_nb.serve.shadow import binance_source
    run_dir, registry, klines = deployed
    symbols = ["BTCUSDT"] + [s for s in profile_config("smoke").data.symbols if s != "BTCUSDT"]
    market = load_bars(klines, symbols=symbols, timeframe="1h").bars

    def exchange(request):   # GET /api/v3/klines over the stored market, full-precision prices
        bars = market[request.args["symbol"]]
        opened = bars.index.as_unit("ms").asi8
        chosen = (opened >= int(request.args["startTime"])) & (opened <= int(request.args["endTime"]))
        rows = [[int(t), *(repr(float(r[c])) for c in ("open", "high", "low", "close", "volume")), int(t) + 3_599_999,
                 repr(float(r["quote_volume"])), int(r["trades"]), repr(float(r["taker_buy_base"])),
                 repr(float(r["taker_buy_quote"])), "0"] for t, (_, r) in zip(opened[chosen], bars[chosen].iterrows())]
        return Response(json.dumps(rows[:int(request.args["limit"])]), content_type="application/json",
                        headers={"X-MBX-USED-WEIGHT-1M": "10"})

    httpserver.expect_request(KLINES_PATH).respond_with_handler(exchange)
    opens = market["BTCUSDT"].index
    now = {"s": (opens[-4] + pd.Timedelta(minutes=30)).timestamp()}        # half-way through the 4th-newest bar: open
    clock, sleep = (lambda: now["s"]), (lambda seconds: now.update(s=now["s"] + seconds))
    source = lambda config: itertools.islice(binance_source(config.data.symbols, tmp_path / "data", base_url=httpserver.url_for("/"),
                                                             sleep=sleep, clock=clock), 3)   # three hourly cycles
    counts = shadow("1h", registry, source, tmp_path / "live.sqlite", say=lambda _: None)
    frame = PredictionLog(tmp_path / "live.sqlite").frame()
    assert counts["predicted"] == 3 and list(frame["bar_time"]) == list(opens[-5:-2])   # each newly closed bar, once
    stored = load_bars(tmp_path / "data", symbols=symbols, timeframe="1h").bars["BTCUSDT"]
    assert stored.index[-1] == opens[-3]                                  # the bar open at the last fetch was not stored
    shadow("1h", registry, lambda config: replay_source(klines, symbols, start=opens[-5], end=opens[-3]),
           tmp_path / "replay.sqlite", start=opens[-5], say=lambda _: None)
    np.testing.assert_allclose(frame["p_up"], PredictionLog(tmp_path / "replay.sqlite").frame()["p_up"], rtol=0, atol=1e-9)
