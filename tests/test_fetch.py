"""`fetch_klines` and `macd-nb fetch` against a real HTTP server on 127.0.0.1 (pytest-httpserver) serving recorded klines in
Binance's layouts (the /api/v3/klines JSON, the monthly dump ZIPs and their CHECKSUM files), with injected faults. Sleeping
and the clock are injected, so every wait is checked and nothing waits for real (but the timeout case)."""
import hashlib
import io
import json
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
from werkzeug import Response

from macd_nb.core.data import load_bars
from macd_nb.core.klines import KLINE_COLUMNS, DataError, example_klines, month_file
from macd_nb.serve.binance import KLINES_PATH, ChecksumMismatch, FetchError, IPBanned, dump_name, dump_path, fetch_klines

HOUR = 3_600_000


def recorded(n: int, start: str, seed: int = 0) -> list[list]:
    "Klines as GET /api/v3/klines returns them: times and trades as integers, prices and volumes as strings."
    frame = example_klines(n, start, seed=seed)
    return [[int(r.open_time), *(f"{getattr(r, c):.8f}" for c in KLINE_COLUMNS[1:6]), int(r.close_time),
             f"{r.quote_volume:.8f}", int(r.trades), f"{r.taker_buy_base:.8f}", f"{r.taker_buy_quote:.8f}", "0"]
            for r in frame.itertuples()]


def in_microseconds(rows: list[list]) -> list[list]:
    "The same klines as a 2025 spot dump writes them: open and close time in microseconds."
    return [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in rows]


def mid_bar(rows: list[list], i: int) -> float:
    "A clock (epoch s) half-way through bar i: bar i is still open, the bars before it are closed."
    return (rows[i][0] + HOUR // 2) / 1000


class Exchange:
    "GET /api/v3/klines over `rows`; queued faults (a Response, or a callable returning one or None) answer first."
    def __init__(self, rows: list[list], used_weight=lambda n: 2 * n):
        self.rows, self.used_weight, self.faults, self.requests, self.mangle = rows, used_weight, [], [], None

    def __call__(self, request):
        self.requests.append({k: request.args[k] for k in request.args})
        if self.faults:
            fault = self.faults.pop(0)
            answer = fault if isinstance(fault, Response) or fault is None else fault(request)
            if answer is not None: return answer
        start, end, limit = (int(request.args[k]) for k in ("startTime", "endTime", "limit"))
        page = [r for r in self.rows if start <= r[0] <= end][:limit]
        if self.mangle: page = self.mangle(len(self.requests), start, page)
        return Response(json.dumps(page), content_type="application/json",
                        headers={"X-MBX-USED-WEIGHT-1M": str(self.used_weight(len(self.requests)))})


def serve(httpserver, rows) -> Exchange:
    "Register an exchange over `rows` on the server."
    exchange = Exchange(rows)
    httpserver.expect_request(KLINES_PATH).respond_with_handler(exchange)
    return exchange


def fetch(httpserver, data_dir, now: float, sleeps: list | None = None, **options):
    "fetch_klines of BTCUSDT 1h from 2024-01-30 against the test server, the clock at `now`, sleeps recorded."
    options = {"symbols": "BTCUSDT", "start": "2024-01-30", "limit": 100, "attempts": 4, "timeout": 2.0, **options}
    return fetch_klines(options.pop("symbols"), "1h", options.pop("start"), base_url=httpserver.url_for("/"), data_dir=data_dir,
                        progress=False, clock=lambda: now, sleep=(sleeps if sleeps is not None else []).append, **options)


def assert_stored(data_dir, rows: list[list], symbol: str = "BTCUSDT") -> None:
    "The month files hold exactly these rows' text, each once, in order; load_bars gives exactly their values."
    files = sorted(data_dir.glob(f"{symbol}-1h-*.csv"))
    assert [line for f in files for line in f.read_text().splitlines()] == [",".join(map(str, r)) for r in rows]
    bars = load_bars(data_dir, symbols=[symbol], cache_dir=False).bars[symbol]
    assert list(bars.index.asi8 // 10**6) == [r[0] if r[0] < 10**14 else r[0] // 1000 for r in rows]
    columns = ["open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"]
    expected = np.array([[float(r[i]) for i in (1, 2, 3, 4, 5, 7, 8, 9, 10)] for r in rows])
    np.testing.assert_array_equal(bars[columns].to_numpy(), expected)


ROWS = recorded(250, "2024-01-30")   # 48 bars in January, the rest in February
NOW = mid_bar(ROWS, 249)             # the last served bar is still open


# --- REST: paging, the open bar, overlaps, resume -------------------------------------------------------------------

def test_pages_overlapping_and_repeated_store_each_closed_bar_once(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    earlier = lambda start: [r for r in ROWS if r[0] < start]
    exchange.mangle = lambda n, start, page: earlier(start)[-3:] + page[:2] + page if n == 2 else page + page[-1:]
    [summary] = fetch(httpserver, tmp_path, NOW)
    assert (summary.added, summary.requests, summary.retries, summary.weight) == (249, 3, 0, 6)
    assert [r["startTime"] for r in exchange.requests] == [str(ROWS[i][0]) for i in (0, 100, 200)]
    assert summary.files == ["BTCUSDT-1h-2024-01.csv", "BTCUSDT-1h-2024-02.csv"]
    assert_stored(tmp_path, ROWS[:-1])   # everything closed, once; the open bar never
    assert "249 bars added (2024-01-30 00:00 .. 2024-02-09 08:00 UTC), 3 requests, 0 retries, weight 6" in summary.line()


def test_resume_appends_only_newer_bars_and_keeps_the_earlier_bytes(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    fetch(httpserver, tmp_path, mid_bar(ROWS, 150))
    before = {f.name: f.read_bytes() for f in tmp_path.glob("*.csv")}
    assert_stored(tmp_path, ROWS[:150])
    asked = len(exchange.requests)
    [summary] = fetch(httpserver, tmp_path, NOW)
    assert exchange.requests[asked]["startTime"] == str(ROWS[150][0])   # the second fetch starts after the last stored bar
    assert (summary.added, summary.first) == (99, "2024-02-05 06:00")
    for name, data in before.items(): assert (tmp_path / name).read_bytes().startswith(data), name
    assert_stored(tmp_path, ROWS[:-1])
    [again] = fetch(httpserver, tmp_path, NOW)
    assert again.added == 0 and "no new bars" in again.line()


def test_two_different_copies_of_one_bar_are_refused_naming_both(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    changed = lambda r: [*r[:4], "1.00000000", *r[5:]]
    exchange.mangle = lambda n, start, page: [changed(ROWS[99])] + page if n == 2 else page
    with pytest.raises(DataError) as refused:
        fetch(httpserver, tmp_path, NOW)
    message = str(refused.value)
    assert f"{month_file(tmp_path, 'BTCUSDT', '1h', ROWS[99][0])} line 52 and GET http://127.0.0.1:" in message
    assert f"startTime={ROWS[100][0]}" in message and "row 1: two different bars for open_time 2024-02-03 03:00 UTC" in message
    assert_stored(tmp_path, ROWS[:100])   # the pages before the clash are kept, nothing of the clashing page


# --- REST: rate limits, bans and retries ----------------------------------------------------------------------------

def test_429_waits_the_retry_after_seconds(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.faults = [None, Response("", status=429, headers={"Retry-After": "7"})]   # the second request is refused once
    sleeps = []
    [summary] = fetch(httpserver, tmp_path, NOW, sleeps)
    assert sleeps == [7.0] and (summary.retries, summary.requests) == (1, 4)
    assert_stored(tmp_path, ROWS[:-1])


def test_418_stops_at_once_with_the_end_of_the_ban(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.faults = [Response("", status=418, headers={"Retry-After": "5400"})]
    sleeps = []
    with pytest.raises(IPBanned) as banned:
        fetch(httpserver, tmp_path, NOW, sleeps)
    ends = pd.Timestamp(NOW + 5400, unit="s")
    assert f"GET {httpserver.url_for(KLINES_PATH)}?symbol=BTCUSDT&interval=1h&startTime={ROWS[0][0]}" in str(banned.value)
    assert "HTTP 418" in str(banned.value) and f"until {ends:%Y-%m-%d %H:%M:%S} UTC (Retry-After 5400 s)" in str(banned.value)
    assert len(exchange.requests) == 1 and sleeps == [] and not list(tmp_path.glob("*.csv"))


def test_5xx_is_retried_with_capped_jittered_backoff(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.faults = [Response("busy", status=503), Response("oops", status=500)]
    sleeps = []
    [summary] = fetch(httpserver, tmp_path, NOW, sleeps)
    assert summary.retries == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 1.5   # 0.5 s, 1 s, ... + jitter
    assert_stored(tmp_path, ROWS[:-1])


def test_malformed_json_is_retried_then_named(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.faults = [Response('[[1704067200000, "42000', content_type="application/json")]
    [summary] = fetch(httpserver, tmp_path, NOW)
    assert summary.retries == 1
    assert_stored(tmp_path, ROWS[:-1])
    exchange.faults = [Response("<html>maintenance</html>") for _ in range(4)]
    with pytest.raises(FetchError) as failed:
        fetch(httpserver, tmp_path / "again", NOW, attempts=4)
    message = str(failed.value)
    assert f"GET {httpserver.url_for(KLINES_PATH)}?symbol=BTCUSDT&interval=1h&startTime={ROWS[0][0]}&endTime=" in message
    assert "malformed JSON" in message and "'<html>maintenance</html>'" in message and "(4 attempts)" in message


def test_a_request_past_the_timeout_is_retried(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.faults = [lambda request: time.sleep(1.0)]   # then answers normally, too late
    began = time.perf_counter()
    [summary] = fetch(httpserver, tmp_path, NOW, timeout=0.3)
    assert summary.retries == 1 and time.perf_counter() - began < 5
    assert_stored(tmp_path, ROWS[:-1])


def test_used_weight_near_the_budget_waits_for_the_next_minute(httpserver, tmp_path):
    exchange = serve(httpserver, ROWS)
    exchange.used_weight = lambda n: 5399   # 5399 + 2 passes the default budget of 5400 (90% of 6000)
    sleeps = []
    [summary] = fetch(httpserver, tmp_path, NOW, sleeps)
    assert sleeps == [60 - NOW % 60 + 0.5] * 2 and summary.requests == 3   # before the 2nd and the 3rd request
    assert summary.used_weight == 5399 and "(used 5399/6000 this minute)" in summary.line()
    exchange.used_weight = lambda n: 5000
    sleeps.clear()
    fetch(httpserver, tmp_path / "below", NOW, sleeps)
    assert sleeps == []


# --- monthly dumps --------------------------------------------------------------------------------------------------

def zipped(rows: list[list], name: str) -> bytes:
    "A dump ZIP: the headerless CSV of `rows`."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name.replace(".zip", ".csv"), "".join(",".join(map(str, r)) + "\n" for r in rows))
    return buffer.getvalue()


def publish(httpserver, month: str, rows: list[list] | None, *, archive: bytes | None = None, checksum: str | None = None):
    "Serve one month's dump and CHECKSUM like data.binance.vision (rows None: 404 for both)."
    stamp = pd.Timestamp(month)
    path, name = dump_path("BTCUSDT", "1h", stamp), dump_name("BTCUSDT", "1h", stamp)
    if rows is None:
        for p in (path, path + ".CHECKSUM"): httpserver.expect_request(p).respond_with_data("", status=404)
        return
    archive = archive if archive is not None else zipped(rows, name)
    httpserver.expect_request(path).respond_with_data(archive, content_type="application/zip")
    httpserver.expect_request(path + ".CHECKSUM").respond_with_data(f"{checksum or hashlib.sha256(archive).hexdigest()}  {name}\n")


DECEMBER, JANUARY = recorded(31 * 24, "2024-12-01", seed=1), recorded(31 * 24, "2025-01-01", seed=2)
FEBRUARY_10 = pd.Timestamp("2025-02-10 12:30").timestamp()


def test_dumps_in_ms_and_us_load_to_the_same_bars_as_rest(httpserver, tmp_path):
    publish(httpserver, "2024-12", DECEMBER)
    publish(httpserver, "2025-01", in_microseconds(JANUARY))   # spot dumps switched to microseconds on 2025-01-01
    publish(httpserver, "2025-02", None)                       # not published yet
    [summary] = fetch(httpserver, tmp_path / "dumps", FEBRUARY_10, start="2024-12-01", source="dumps")
    assert (summary.added, summary.missing, summary.requests) == (62 * 24, ["2025-02"], 5)
    assert "not published (404), skipped: 2025-02" in summary.line()
    assert_stored(tmp_path / "dumps", DECEMBER + in_microseconds(JANUARY))
    dumps = load_bars(tmp_path / "dumps", symbols=["BTCUSDT"], cache_dir=False)
    assert dumps.report.files["BTCUSDT"].time_units == {"ms": 31 * 24, "us": 31 * 24}

    serve(httpserver, DECEMBER + JANUARY)
    fetch(httpserver, tmp_path / "rest", FEBRUARY_10, start="2024-12-01", end="2025-01-31", limit=1000)
    rest = load_bars(tmp_path / "rest", symbols=["BTCUSDT"], cache_dir=False)
    pd.testing.assert_frame_equal(rest.bars["BTCUSDT"], dumps.bars["BTCUSDT"])
    assert rest.fingerprint == dumps.fingerprint

    [again] = fetch(httpserver, tmp_path / "dumps", FEBRUARY_10, start="2024-12-01", source="dumps")
    assert (again.added, again.requests) == (0, 1)   # complete months are not downloaded again; February asked once more


def test_a_dump_back_fills_a_month_the_api_started_late_in_order(httpserver, tmp_path):
    serve(httpserver, DECEMBER)
    fetch(httpserver, tmp_path, FEBRUARY_10, start="2024-12-15", end="2024-12-31", limit=1000)
    assert_stored(tmp_path, DECEMBER[14 * 24:])
    publish(httpserver, "2024-12", DECEMBER)
    [summary] = fetch(httpserver, tmp_path, FEBRUARY_10, start="2024-12-01", end="2024-12-31", source="dumps")
    assert (summary.added, summary.first, summary.last) == (14 * 24, "2024-12-01 00:00", "2024-12-14 23:00")
    assert_stored(tmp_path, DECEMBER)   # rewritten in order; the bars both sources hold were checked equal


def test_a_wrong_checksum_is_refused_and_nothing_kept(httpserver, tmp_path):
    archive = zipped(DECEMBER, "BTCUSDT-1h-2024-12.zip")
    publish(httpserver, "2024-12", DECEMBER, checksum="0" * 64)
    with pytest.raises(ChecksumMismatch) as refused:
        fetch(httpserver, tmp_path, FEBRUARY_10, start="2024-12-01", end="2024-12-31", source="dumps")
    message = str(refused.value)
    assert "BTCUSDT-1h-2024-12.zip (GET http://127.0.0.1:" in message and "/data/spot/monthly/klines/BTCUSDT/1h/" in message
    assert f"sha256 {hashlib.sha256(archive).hexdigest()} of the download, {'0' * 64} in its CHECKSUM file" in message
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_truncated_zip_is_a_data_error_naming_it(httpserver, tmp_path):
    truncated = zipped(DECEMBER, "BTCUSDT-1h-2024-12.zip")[:-300]
    publish(httpserver, "2024-12", DECEMBER, archive=truncated)   # its CHECKSUM matches: the archive itself is cut
    with pytest.raises(DataError) as refused:
        fetch(httpserver, tmp_path, FEBRUARY_10, start="2024-12-01", end="2024-12-31", source="dumps")
    assert "BTCUSDT-1h-2024-12.zip (GET http://127.0.0.1:" in str(refused.value)
    assert "truncated or corrupt ZIP archive" in str(refused.value) and not list(tmp_path.glob("*.csv"))


# --- the command line -----------------------------------------------------------------------------------------------

def test_cli_fetch_writes_the_data_dir_and_refuses_in_one_line(httpserver, tmp_path, capsys):
    from macd_nb.pipeline.cli import main
    serve(httpserver, ROWS)
    args = ["fetch", "--symbols", "BTCUSDT,ETHUSDT", "--interval", "1h", "--start", "2024-01-30", "--end", "2024-02-08",
            "--base-url", httpserver.url_for("/"), "--data-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "BTCUSDT 1h (rest): 240 bars added (2024-01-30 00:00 .. 2024-02-08 23:00 UTC), 1 requests" in out and "ETHUSDT 1h" in out
    assert load_bars(tmp_path, cache_dir=False).symbols == ["BTCUSDT", "ETHUSDT"]
    httpserver.clear()
    httpserver.expect_request(KLINES_PATH).respond_with_data("", status=418, headers={"Retry-After": "60"})
    assert main(["fetch", "--symbols", "BTCUSDT", "--start", "2024-02-09", "--base-url", httpserver.url_for("/"),
                 "--data-dir", str(tmp_path / "banned")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("macd-nb fetch: refused: GET http://127.0.0.1:")
    assert "HTTP 418" in err and "until" in err and "(Retry-After 60 s)" in err
