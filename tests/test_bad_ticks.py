"""Bad ticks and gaps: implausible bars (a 100x print, a low of 1e-12) are caught, named and, by policy, kept, excluded or
refused; a real crash that recovers is not; rows whose windows or labels span a long gap are excluded and counted; the
data cache rebuilds an entry nothing vouches for or that cannot be read. Real-data checks skip when the data is absent."""
import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.data import SPIKE_FACTOR, implausible_bars, load_bars
from macd_nb.core.klines import DataError, example_klines, write_kline_dump
from macd_nb.core.prepare import LOOKBACK_BARS, load_table, prepare_run
from macd_nb.core.rundir import LEDGER, sha256_file

from conftest import needs_shared_data

N_BARS = 24 * 120   # 120 days: the 1d MACD warm-up takes 34 of them
HORIZON = 24        # the longest label horizon of the smoke profile
BAD = 24 * 90       # row of the planted bad tick: 2024-03-31 00:00, well after the warm-up
BAD_TIME = pd.Timestamp("2024-03-31 00:00", tz="UTC")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MACD_NB_CACHE", str(tmp_path / "cache"))


def klines(seed: int, start: str = "2024-01-01", n_rows: int = N_BARS) -> pd.DataFrame:
    return example_klines(n_rows, start, seed=seed)


def print_100x(rows: pd.DataFrame, row: int = BAD) -> pd.DataFrame:
    "One trade printed at 100 times the price: close and high of one bar."
    rows = rows.copy()
    rows.loc[row, ["high", "close"]] = rows.loc[row, "close"] * 100
    return rows


def prepare(tmp_path: Path, frames: dict[str, pd.DataFrame], **settings) -> dict:
    "Write the frames as Binance dumps, run the prepare stage on them (smoke profile, `settings` on top), return its record."
    folder = tmp_path / "klines"
    folder.mkdir(parents=True, exist_ok=True)
    for symbol, rows in frames.items():
        write_kline_dump(rows, folder / f"{symbol}-1h.csv")
    config = profile_config("smoke", data_source=str(folder), symbols=list(frames), start=None, **settings)
    prepare_run(config, tmp_path / "run")
    return json.loads((tmp_path / "run" / "results" / "prepare.json").read_text())


# --- the rule ------------------------------------------------------------------------------------------------------

def test_the_rule_catches_prints_and_keeps_crashes_and_level_shifts():
    bars = pd.DataFrame({"open": 100.0, "high": 101.0, "low": 99.0, "close": 100.0}, index=range(40))
    bars.loc[5, ["high", "close"]] = 100.0 * SPIKE_FACTOR * 1.01    # just above the factor
    bars.loc[10, "high"] = 100.0 * SPIKE_FACTOR * 0.99              # just below it
    bars.loc[15, "low"] = 1e-12
    bars.loc[20:23, ["low", "close"]] = [[70.0, 72.0], [60.0, 75.0], [80.0, 85.0], [90.0, 95.0]]   # a crash that recovers
    bars.loc[30:, ["open", "high", "low", "close"]] *= 100                                         # a level that stays
    flagged, why = implausible_bars(bars)
    assert list(np.flatnonzero(flagged)) == [5, 15]
    assert why[0].startswith("high 2020 is 20.2x away") and why[1].startswith("low 1e-12 is 1e+14x away")
    edges = bars.iloc[:4].copy()
    edges.loc[0, "low"] = 1.0      # the first bar has only bars after it: still compared with them
    assert list(np.flatnonzero(implausible_bars(edges)[0])) == [0]


# --- through the prepare stage -------------------------------------------------------------------------------------

def test_a_100x_print_is_named_and_the_rows_it_touches_excluded(tmp_path):
    record = prepare(tmp_path, {"BTCUSDT": print_100x(klines(1)), "ETHUSDT": klines(2)})
    counted = record["data_report"]["files"]["BTCUSDT"]
    assert counted["implausible_bars"] == 1 and counted["implausible_open_times"] == ["2024-03-31 00:00"]
    assert counted["bad_bars"] == "exclude" and counted["rows_out"] == N_BARS - 1    # dropped, never filled
    assert counted["examples"]["implausible_bars"][0].startswith(
        f"{tmp_path / 'klines' / 'BTCUSDT-1h.csv'} row {BAD + 1} (open_time 2024-03-31 00:00 UTC): high ")
    assert record["data_report"]["files"]["ETHUSDT"]["implausible_bars"] == 0
    summary = record["timeframes"]["1h"]
    # the target's own bar: labels of the 24 rows before it, lookbacks of the 167 rows after it (the bar itself is gone)
    assert summary["bad_bar_excluded_rows"] == HORIZON + LOOKBACK_BARS - 1
    table, _ = load_table(tmp_path / "run", "1h")
    touching = (table.index >= BAD_TIME - HORIZON * pd.Timedelta("1h")) & (table.index < BAD_TIME + LOOKBACK_BARS * pd.Timedelta("1h"))
    assert not touching.any() and summary["rows"] == len(table)
    assert table["ret_1"].abs().max() < np.log(2)    # nothing is built from the print


def test_flag_keeps_the_print_and_only_counts_it(tmp_path):
    record = prepare(tmp_path, {"BTCUSDT": print_100x(klines(1)), "ETHUSDT": klines(2)}, bad_bars="flag")
    assert record["data_report"]["files"]["BTCUSDT"]["implausible_bars"] == 1
    assert record["timeframes"]["1h"]["bad_bar_excluded_rows"] == 0
    table, _ = load_table(tmp_path / "run", "1h")
    assert table.loc[BAD_TIME, "ret_1"] > np.log(50)    # what the models would train on: the print, kept


def test_a_bad_print_in_another_symbol_excludes_the_target_rows_it_feeds(tmp_path):
    record = prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": print_100x(klines(2))})
    assert record["data_report"]["files"]["ETHUSDT"]["implausible_bars"] == 1
    summary = record["timeframes"]["1h"]
    # ETH's bar is gone: the target row at that hour has no eth_ret_1 (an undefined feature), the next 167 touch it
    assert summary["excluded_rows"]["no_bar_of"] == {"ETHUSDT": 1} and summary["bad_bar_excluded_rows"] == LOOKBACK_BARS - 1


def test_a_low_of_1e_minus_12_is_caught(tmp_path):
    rows = klines(1)
    rows.loc[24 * 80, "low"] = 1e-12
    record = prepare(tmp_path, {"BTCUSDT": rows, "ETHUSDT": klines(2)})
    counted = record["data_report"]["files"]["BTCUSDT"]
    assert counted["implausible_open_times"] == ["2024-03-21 00:00"]
    assert "row 1921 (open_time 2024-03-21 00:00 UTC): low 1e-12 is" in counted["examples"]["implausible_bars"][0]


def test_refuse_names_the_file_row_and_the_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, {"BTCUSDT": print_100x(klines(1)), "ETHUSDT": klines(2)}, bad_bars="refuse")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'klines' / 'BTCUSDT-1h.csv'} row {BAD + 1} (open_time 2024-03-31 00:00 UTC): high ")
    assert "implausible bar" in message and "`bad_bars: exclude`" in message and "fix the file" in message


def test_a_30_percent_crash_that_recovers_is_kept(tmp_path):
    rows = klines(1)
    price = rows.loc[BAD - 1, "close"]
    crash = price * np.array([0.70, 0.75, 0.85, 0.95, 1.0])     # -30% in an hour, back over four
    rows.loc[BAD:BAD + 4, "close"] = crash
    rows.loc[BAD:BAD + 4, "open"] = np.r_[price, crash[:-1]]
    rows.loc[BAD:BAD + 4, "low"] = np.minimum(rows.loc[BAD:BAD + 4, "open"], crash) * 0.9
    rows.loc[BAD:BAD + 4, "high"] = np.maximum(rows.loc[BAD:BAD + 4, "open"], crash)
    record = prepare(tmp_path, {"BTCUSDT": rows, "ETHUSDT": klines(2)})
    assert record["data_report"]["files"]["BTCUSDT"]["implausible_bars"] == 0
    assert record["timeframes"]["1h"]["bad_bar_excluded_rows"] == 0 and record["timeframes"]["1h"]["rows"] == 2065


def test_many_implausible_bars_make_the_file_unusable(tmp_path):
    rows = klines(1)
    for row in range(100, 2000, 50):
        rows = print_100x(rows, row)
    with pytest.raises(DataError, match=r"implausible bars .* in 38 of 2880 rows, more than 1%: file unusable"):
        prepare(tmp_path, {"BTCUSDT": rows, "ETHUSDT": klines(2)}, bad_bars="flag")


# --- gaps ----------------------------------------------------------------------------------------------------------

def with_gap(seed: int, first_missing: int, hours: int) -> pd.DataFrame:
    "N_BARS rows with the ones from `first_missing` on moved `hours` later (an outage of that length), price 1.4x after it."
    rows = klines(seed)
    later = rows.index >= first_missing
    rows.loc[later, "open_time"] += hours * 3_600_000
    rows.loc[later, ["open", "high", "low", "close"]] *= 1.4
    return rows


def test_the_first_return_across_a_six_month_gap_is_not_a_training_row(tmp_path):
    gap_hours, cut = 24 * 183, 24 * 60
    frames = {"BTCUSDT": with_gap(1, cut, gap_hours), "ETHUSDT": with_gap(2, cut, gap_hours)}
    record = prepare(tmp_path, frames)
    summary = record["timeframes"]["1h"]
    first_after = pd.Timestamp("2024-01-01", tz="UTC") + (cut + gap_hours) * pd.Timedelta("1h")
    table, _ = load_table(tmp_path / "run", "1h")
    assert first_after not in table.index and table["ret_1"].abs().max() < 0.2     # ln(1.4) = 0.34 is gone
    # the target's: 24 rows whose labels reach into it, 167 whose windows span it; ETH's gap is at the same hours
    assert summary["gap_excluded_rows"] == HORIZON + LOOKBACK_BARS - 1
    gaps = summary["gap_exclusion"]
    assert gaps["holes"] == 2 and gaps["largest"][0]["missing_hours"] == gap_hours and gaps["max_gap_hours"] == 24
    assert gaps["first_rows"][0] == f"{pd.Timestamp('2024-01-01') + (cut - HORIZON) * pd.Timedelta('1h'):%Y-%m-%d %H:%M}"


def test_max_gap_hours_sets_what_a_long_gap_is(tmp_path):
    frames = {"BTCUSDT": with_gap(1, 24 * 70, 14), "ETHUSDT": klines(2)}   # a 14-hour outage, like Binance's
    default = prepare(tmp_path / "default", frames)["timeframes"]["1h"]
    strict = prepare(tmp_path / "strict", frames, max_gap_hours=6)["timeframes"]["1h"]
    assert default["gap_excluded_rows"] == 0
    assert strict["gap_excluded_rows"] == HORIZON + LOOKBACK_BARS - 1 and strict["rows"] == default["rows"] - strict["gap_excluded_rows"]


def test_gaps_are_measured_at_each_timeframe(tmp_path):
    gap_hours, cut = 24 * 183, 24 * 60
    frames = {"BTCUSDT": with_gap(1, cut, gap_hours), "ETHUSDT": with_gap(2, cut, gap_hours)}
    four_hour = prepare(tmp_path, frames, timeframes=["1h", "4h"])["timeframes"]["4h"]
    assert four_hour["gap_excluded_rows"] == HORIZON + LOOKBACK_BARS - 1      # in 4h bars: the same rule, in bars


# --- the data cache ------------------------------------------------------------------------------------------------

def _cached_load(tmp_path: Path):
    if not (tmp_path / "data").exists():   # written once: a rewrite would change the cache key (the file's mtime)
        (tmp_path / "data").mkdir()
        write_kline_dump(klines(1, n_rows=300), tmp_path / "data" / "BTCUSDT-1h.csv")
    return load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")


def test_a_cache_entry_without_a_recorded_hash_is_rebuilt_not_used(tmp_path):
    cold = _cached_load(tmp_path)
    (tmp_path / "cache" / LEDGER).unlink()                    # a copied cache folder, or a removed ledger
    cached = next((tmp_path / "cache").glob("*.parquet"))
    edited = pd.read_parquet(cached)
    edited.iloc[10, edited.columns.get_loc("close")] *= 2      # an edited value
    edited.to_parquet(cached)
    with pytest.warns(UserWarning, match=rf"rebuilding a cache entry without a recorded hash: .*{LEDGER} holds no sha256"):
        again = _cached_load(tmp_path)
    assert again.report.cache_hits == 0 and again.fingerprint == cold.fingerprint
    assert _cached_load(tmp_path).report.cache_hits == 1       # rewritten with its hash: used from now on


def test_a_truncated_cache_parquet_is_rebuilt(tmp_path):
    cold = _cached_load(tmp_path)
    cached = next((tmp_path / "cache").glob("*.parquet"))
    cached.write_bytes(cached.read_bytes()[:-200])
    with pytest.warns(UserWarning, match=rf"rebuilding a corrupt cache entry: .*{cached.name}: corrupt"):
        again = _cached_load(tmp_path)
    assert again.report.cache_hits == 0 and again.fingerprint == cold.fingerprint
    cached.write_bytes(cached.read_bytes()[:-200])
    (tmp_path / "cache" / LEDGER).unlink()
    with pytest.warns(UserWarning, match="rebuilding a cache entry without a recorded hash"):
        assert _cached_load(tmp_path).fingerprint == cold.fingerprint


def test_an_unreadable_cache_parquet_with_its_hash_recorded_is_rebuilt(tmp_path):
    cold = _cached_load(tmp_path)
    cached = next((tmp_path / "cache").glob("*.parquet"))
    cached.write_bytes(cached.read_bytes()[:-200])
    with open(tmp_path / "cache" / LEDGER, "a") as ledger:    # a writer that recorded the hash of a cut file
        ledger.write(json.dumps({"file": cached.name, "sha256": sha256_file(cached), "bytes": cached.stat().st_size}) + "\n")
    with pytest.warns(UserWarning, match=rf"rebuilding an unreadable cache entry: .*{cached.name}: Arrow"):
        again = _cached_load(tmp_path)
    assert again.report.cache_hits == 0 and again.fingerprint == cold.fingerprint


def test_the_bad_bar_policy_is_part_of_the_cache_key(tmp_path):
    (tmp_path / "data").mkdir()
    write_kline_dump(print_100x(klines(1, n_rows=300), 100), tmp_path / "data" / "BTCUSDT-1h.csv")
    flagged = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache", bad_bars="flag")
    excluded = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache", bad_bars="exclude")
    assert excluded.report.cache_hits == 0 and len(flagged.bars["BTCUSDT"]) == len(excluded.bars["BTCUSDT"]) + 1
    assert excluded.bars["BTCUSDT"]["gap_before"].sum() == 1
    with pytest.raises(DataError, match="row 101"):
        load_bars(tmp_path / "data", cache_dir=tmp_path / "cache", bad_bars="refuse")


# --- the real data -------------------------------------------------------------------------------------------------

@needs_shared_data
def test_real_data_flags_only_the_link_wick_of_2020_03_12(shared_data):
    "All 17 symbols, every bar since listing: the one bar beyond the factor is LINKUSDT's low of 0.0001 (a 23,000x wick)."
    market = load_bars(shared_data, cache_dir=False)
    flagged = {(symbol, t) for symbol, report in market.report.files.items() for t in report.implausible_open_times}
    assert len(market.bars) == 17 and flagged == {("LINKUSDT", "2020-03-12 10:00")}


@needs_shared_data
def test_a_bad_tick_planted_in_real_btc_is_the_one_flagged(shared_data, tmp_path):
    rows = pd.read_csv(shared_data / "BTCUSDT-1h.csv.gz")
    rows = rows[rows["open_time"] >= pd.Timestamp("2021-01-01").value // 1_000_000].reset_index(drop=True)
    planted = pd.Timestamp("2023-06-01 12:00", tz="UTC")
    at = int(np.flatnonzero(rows["open_time"] == planted.value // 1_000_000)[0])
    rows.loc[at, ["high", "close"]] = rows.loc[at, "close"] * 100
    (tmp_path / "data").mkdir()
    with gzip.open(tmp_path / "data" / "BTCUSDT-1h.csv.gz", "wt") as handle:
        rows.to_csv(handle, index=False)
    report = load_bars(tmp_path / "data", cache_dir=False).report.files["BTCUSDT"]
    assert report.implausible_open_times == ["2023-06-01 12:00"]          # and nothing of 2021-05-19, 2022-11 (FTX)
    assert report.examples["implausible_bars"][0].startswith(f"{tmp_path / 'data' / 'BTCUSDT-1h.csv.gz'} row {at + 2} ")
