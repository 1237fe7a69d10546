"Bad input, formats, resampling, fingerprint and the real data for macd_nb.core.klines and macd_nb.core.data."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.data import MarketData, fingerprint, load_bars, resample_bars, validate_bars
from macd_nb.core.klines import DataError, example_klines, read_klines, write_kline_dump

from conftest import SHARED_DATA as SHARED, needs_shared_data


def kline_rows(n_rows: int = 200, *args, **kwargs) -> pd.DataFrame:
    "Consistent Binance-layout kline rows (200 by default); open_time in seconds * unit_factor (1000 = ms, 1e6 = us)."
    return example_klines(n_rows, *args, **kwargs)


write_dump = write_kline_dump   # headerless Binance dump: bare CSV, or zipped when the name ends in .zip


def load_one(rows: pd.DataFrame, path: Path):
    "Validate rows written as the dump `path`: (bars, report)."
    return validate_bars(read_klines(write_dump(rows, path)), name=path.name)


def error_of(rows: pd.DataFrame, path: Path) -> str:
    with pytest.raises(DataError) as caught:
        load_one(rows, path)
    return str(caught.value)


# --- bad input, one case each -------------------------------------------------------------------------------------

def test_exact_duplicates_dropped_and_counted(tmp_path):
    rows = kline_rows()
    bars, report = load_one(pd.concat([rows, rows.iloc[[3, 4, 4]]]), tmp_path / "BTCUSDT-1h.csv")
    assert report.duplicates_dropped == 3 and len(bars) == 200 and report.rows_read == 203
    assert "BTCUSDT-1h.csv row 201" in report.examples["duplicates_dropped"][0]


def test_conflicting_duplicate_names_both_rows(tmp_path):
    rows = kline_rows()
    clash = rows.iloc[[7]].assign(close=rows.loc[7, "close"] + 1)
    message = error_of(pd.concat([rows, clash]), tmp_path / "BTCUSDT-1h.csv")
    assert "BTCUSDT-1h.csv row 201 (open_time 2024-01-01 07:00 UTC)" in message
    assert "BTCUSDT-1h.csv row 8" in message and "different values" in message and "close" in message


def test_unsorted_rows_sorted_and_counted(tmp_path):
    rows = kline_rows()
    shuffled = pd.concat([rows.iloc[:50], rows.iloc[50:60].iloc[::-1], rows.iloc[60:]])
    bars, report = load_one(shuffled, tmp_path / "BTCUSDT-1h.csv")
    assert report.unsorted_rows == 9 and bars.index.is_monotonic_increasing
    pd.testing.assert_frame_equal(bars, load_one(rows, tmp_path / "BTCUSDT-1h-x.csv")[0])


def test_off_grid_open_time_is_an_error(tmp_path):
    rows = kline_rows()
    rows.loc[16, "open_time"] += 60_000  # 16:01
    message = error_of(rows, tmp_path / "BTCUSDT-1h.csv")
    assert "BTCUSDT-1h.csv row 17 (open_time 2024-01-01 16:01 UTC)" in message and "not on the 1h grid" in message


def test_gaps_kept_absent_and_reported(tmp_path):
    rows = kline_rows().drop(index=[10, 11, 12, 100])
    bars, report = load_one(rows, tmp_path / "BTCUSDT-1h.csv")
    assert len(bars) == 196 and report.missing_slots == 4 and report.n_gaps == 2
    assert report.largest_gaps[0] == {"first_missing": "2024-01-01 10:00", "slots": 3}
    assert bars.loc["2024-01-01 13:00", "gap_before"] == 3 and bars["gap_before"].sum() == 4
    assert bars["gap_before"].dtype == np.int64


def test_ohlc_inconsistency_repaired_and_listed(tmp_path):
    rows = kline_rows()
    rows.loc[20, "high"] = rows.loc[20, "close"] - 0.3  # high below close
    rows.loc[40, "low"] = max(rows.loc[40, "open"], rows.loc[40, "close"]) + 0.1  # low above open/close
    bars, report = load_one(rows, tmp_path / "BTCUSDT-1h.csv")
    assert report.ohlc_repaired == 2 and len(report.examples["ohlc_repaired"]) == 2
    assert "row 21 (open_time 2024-01-01 20:00 UTC)" in report.examples["ohlc_repaired"][0]
    assert ((bars["high"] >= bars[["open", "close", "low"]].max(axis=1)) &
            (bars["low"] <= bars[["open", "close", "high"]].min(axis=1))).all()
    assert bars["high"].iloc[20] == max(rows.loc[20, ["open", "close"]])  # widened just enough
    assert bars["low"].iloc[40] == min(rows.loc[40, ["open", "close"]])


def test_ohlc_inconsistency_above_one_percent_is_an_error(tmp_path):
    rows = kline_rows()
    rows.loc[30:32, "low"] = rows.loc[30:32, "high"] + 1  # 3 of 200 = 1.5%
    message = error_of(rows, tmp_path / "BTCUSDT-1h.csv")
    assert "BTCUSDT-1h.csv row 31" in message and "3 of 200 rows" in message and "unusable" in message


def test_nan_row_dropped_becomes_gap(tmp_path):
    rows = kline_rows()
    rows.loc[50, "volume"] = np.nan
    bars, report = load_one(rows, tmp_path / "BTCUSDT-1h.csv")
    assert report.nan_rows_dropped == 1 and len(bars) == 199 and report.missing_slots == 1
    assert "row 51" in report.examples["nan_rows_dropped"][0]


@pytest.mark.parametrize("column, value, problem", [("open", 0.0, "non-positive price"),
                                                     ("low", -2.0, "non-positive price"),
                                                     ("volume", -1.0, "negative volume")])
def test_non_positive_price_or_negative_volume_is_an_error(tmp_path, column, value, problem):
    rows = kline_rows()
    rows.loc[16, column] = value
    message = error_of(rows, tmp_path / "BTCUSDT-1h.csv")
    assert "BTCUSDT-1h.csv row 17 (open_time 2024-01-01 16:00 UTC)" in message and problem in message


def test_zero_volume_kept_and_counted(tmp_path):
    rows = kline_rows()
    rows.loc[[5, 6], "volume"] = 0.0
    bars, report = load_one(rows, tmp_path / "BTCUSDT-1h.csv")
    assert report.zero_volume == 2 and len(bars) == 200 and (bars["volume"] == 0).sum() == 2


def test_text_in_numeric_column_names_row_and_column(tmp_path):
    rows = kline_rows().astype({"high": object})
    rows.loc[16, "high"] = "12.5x"
    message = error_of(rows, tmp_path / "BTCUSDT-1h.csv")
    assert "BTCUSDT-1h.csv row 17" in message and "column high" in message and "'12.5x'" in message


def test_timestamp_in_no_unit_is_an_error(tmp_path):
    rows = kline_rows()
    rows.loc[16, "open_time"] = 1704  # fits neither s, ms, us nor ns
    message = error_of(rows, tmp_path / "BTCUSDT-1h-2024-01.zip")
    assert "BTCUSDT-1h-2024-01.zip row 17" in message and "fits no timestamp unit" in message


# --- formats -----------------------------------------------------------------------------------------------------

def test_ms_and_us_dumps_give_identical_bars(tmp_path):
    bars_ms, report_ms = load_one(kline_rows(unit_factor=1000), tmp_path / "BTCUSDT-1h-2024-12.zip")
    bars_us, report_us = load_one(kline_rows(unit_factor=1_000_000), tmp_path / "BTCUSDT-1h-2025-01.zip")
    pd.testing.assert_frame_equal(bars_ms, bars_us)
    assert report_ms.time_units == {"ms": 200} and report_us.time_units == {"us": 200}


def test_mixed_unit_monthly_dumps_concatenate(tmp_path):
    rows = kline_rows(72, "2024-12-31")  # the two files overlap on 2025-01-01, in different units
    write_dump(rows.iloc[:48], tmp_path / "SOLUSDT-1h-2024-12.zip")
    us_rows = rows.iloc[24:].assign(open_time=rows["open_time"].iloc[24:] * 1000)
    write_dump(us_rows, tmp_path / "SOLUSDT-1h-2025-01.zip")
    market = load_bars(tmp_path, cache_dir=False)
    report = market.report.files["SOLUSDT"]
    assert len(market.bars["SOLUSDT"]) == 72 and report.duplicates_dropped == 24
    assert report.time_units == {"ms": 48, "us": 48} and len(report.files) == 2
    write_dump(us_rows.assign(close=us_rows["close"] + 0.01), tmp_path / "SOLUSDT-1h-2025-01.zip")
    with pytest.raises(DataError, match=r"SOLUSDT-1h-2025-01.zip row 1 \(open_time 2025-01-01 00:00 UTC\) and "
                                        r".*SOLUSDT-1h-2024-12.zip row 25: same open_time with different values"):
        load_bars(tmp_path, cache_dir=False)


@pytest.mark.parametrize("name", ["BTCUSDT-1h-2024-01.zip", "BTCUSDT-1h.csv.gz"])
def test_a_truncated_archive_is_a_data_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".zip"): write_dump(kline_rows(), path)
    else:
        import gzip
        path.write_bytes(gzip.compress(kline_rows().to_csv(index=False, header=False).encode()))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=f"{name}: truncated or corrupt"):
        read_klines(path)


def test_a_header_only_file_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "BTCUSDT-1h.csv"
    path.write_text("open_time,open,high,low,close,volume\n")
    with pytest.raises(DataError, match="BTCUSDT-1h.csv: no data rows"):
        read_klines(path)


def test_a_date_range_without_data_is_a_data_error_naming_the_files(tmp_path):
    folder = tmp_path / "klines"
    folder.mkdir()
    write_dump(kline_rows(), folder / "BTCUSDT-1h-2024-01.csv")
    with pytest.raises(DataError, match="BTCUSDT: none of its 200 rows fall between 2030-01-01 and 2030-02-01.*BTCUSDT-1h-2024-01.csv"):
        load_bars(folder, symbols=["BTCUSDT"], start="2030-01-01", end="2030-02-01")


def test_zip_and_csv_give_identical_bars(tmp_path):
    rows = kline_rows()
    bars_zip, _ = load_one(rows, tmp_path / "BTCUSDT-1h-2024-01.zip")
    bars_csv, _ = load_one(rows, tmp_path / "BTCUSDT-1h-2024-01.csv")
    pd.testing.assert_frame_equal(bars_zip, bars_csv)
    assert fingerprint({"BTCUSDT": bars_zip}) == fingerprint({"BTCUSDT": bars_csv})


def test_headered_csv_gz_keeps_nan_extras_and_drops_all_nan_columns(tmp_path):
    rows = kline_rows().drop(columns="ignore")
    rows[["close_time", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"]] = np.nan
    rows.loc[:49, "trades"] = 7.0  # known for the first 50 rows only
    rows.to_csv(tmp_path / "ETHUSDT-1h.csv.gz", index=False)
    market = load_bars(tmp_path, cache_dir=False)
    bars, report = market.bars["ETHUSDT"], market.report.files["ETHUSDT"]
    assert list(bars.columns) == ["open", "high", "low", "close", "volume", "trades", "gap_before"]
    assert bars["trades"].notna().sum() == 50 and bars["trades"].dtype == np.float64
    assert report.dropped_columns == ["quote_volume", "taker_buy_base", "taker_buy_quote"]


def test_parquet_round_trip(tmp_path):
    bars, _ = load_one(kline_rows(), tmp_path / "BTCUSDT-1h.csv")
    bars.to_parquet(tmp_path / "BTCUSDT-1h.parquet")  # DatetimeIndex
    bars.reset_index().to_parquet(tmp_path / "ETHUSDT-1h.parquet")  # open_time column
    market = load_bars([tmp_path / "BTCUSDT-1h.parquet", tmp_path / "ETHUSDT-1h.parquet"], cache_dir=False)
    pd.testing.assert_frame_equal(market.bars["BTCUSDT"], bars)
    pd.testing.assert_frame_equal(market.bars["ETHUSDT"], bars)


def test_start_end_bounds_and_both_totals(tmp_path):
    write_dump(kline_rows(24 * 5, "2024-01-01"), tmp_path / "BTCUSDT-1h-2024-01.csv")
    market = load_bars(tmp_path, start="2024-01-02", end="2024-01-03", cache_dir=False)
    bars, report = market.bars["BTCUSDT"], market.report.files["BTCUSDT"]
    assert bars.index[0] == pd.Timestamp("2024-01-02", tz="UTC") and bars.index[-1] == pd.Timestamp("2024-01-03 23:00", tz="UTC")
    assert report.rows_read == 120 and report.rows_in_range == 48 == len(bars)
    timed = load_bars(tmp_path, end="2024-01-03 05:00", cache_dir=False).bars["BTCUSDT"]
    assert timed.index[-1] == pd.Timestamp("2024-01-03 05:00", tz="UTC")


def test_cache_hit_and_invalidation(tmp_path):
    (tmp_path / "data").mkdir()
    path = write_dump(kline_rows(), tmp_path / "data" / "BTCUSDT-1h.csv")
    cold = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")
    warm = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert cold.report.cache_hits == 0 and warm.report.cache_hits == 1 and warm.fingerprint == cold.fingerprint
    pd.testing.assert_frame_equal(warm.bars["BTCUSDT"], cold.bars["BTCUSDT"])
    rows = kline_rows()
    rows.loc[3, "close"] += 0.01
    write_dump(rows, path)
    changed = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert changed.report.cache_hits == 0 and changed.fingerprint != cold.fingerprint


def test_a_corrupt_cache_entry_is_rebuilt_not_used(tmp_path):
    (tmp_path / "data").mkdir()
    write_dump(kline_rows(), tmp_path / "data" / "BTCUSDT-1h.csv")
    cold = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")
    cached = next((tmp_path / "cache").glob("*.parquet"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01
    cached.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=rf"rebuilding a corrupt cache entry: .*{cached.name}: corrupt"):
        again = load_bars(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert again.report.cache_hits == 0 and again.fingerprint == cold.fingerprint
    assert load_bars(tmp_path / "data", cache_dir=tmp_path / "cache").report.cache_hits == 1   # rewritten, verified


def test_report_serialises(tmp_path):
    write_dump(kline_rows(), tmp_path / "BTCUSDT-1h.csv")
    market = load_bars(tmp_path, cache_dir=False)
    assert isinstance(market, MarketData)
    as_json = json.loads(json.dumps(market.report.to_dict()))
    assert as_json["files"]["BTCUSDT"]["rows_out"] == 200
    assert market.report.to_frame().loc["BTCUSDT", "rows_out"] == 200
    assert "| BTCUSDT |" in market.report.to_markdown()


# --- resampling and fingerprint ------------------------------------------------------------------------------------

def test_resample_keeps_complete_bars_only(tmp_path):
    hourly, _ = load_one(kline_rows(48), tmp_path / "BTCUSDT-1h.csv")
    holed = hourly.drop(index=pd.Timestamp("2024-01-01 09:00", tz="UTC"))
    four = resample_bars(holed, "4h")
    slots = pd.date_range("2024-01-01", periods=12, freq="4h", tz="UTC")
    assert list(four.index) == [t for t in slots if t != pd.Timestamp("2024-01-01 08:00", tz="UTC")]
    assert four.loc["2024-01-01 12:00", "gap_before"] == 1 and four["gap_before"].sum() == 1
    window = hourly.loc["2024-01-01 04:00":"2024-01-01 07:00"]
    bar = four.loc["2024-01-01 04:00"]
    assert bar["open"] == window["open"].iloc[0] and bar["close"] == window["close"].iloc[-1]
    assert bar["high"] == window["high"].max() and bar["low"] == window["low"].min()
    assert np.isclose(bar["volume"], window["volume"].sum()) and np.isclose(bar["trades"], window["trades"].sum())
    daily = resample_bars(holed, "1d")
    assert list(daily.index) == [pd.Timestamp("2024-01-02", tz="UTC")]  # day 1 lacks 09:00
    assert list(resample_bars(hourly, "1d").index) == list(pd.date_range("2024-01-01", periods=2, freq="1D", tz="UTC"))


def test_load_bars_resamples_to_4h(tmp_path):
    write_dump(kline_rows(48).drop(index=[9]), tmp_path / "BTCUSDT-1h.csv")
    market = load_bars(tmp_path, timeframe="4h", cache_dir=False)
    assert len(market.bars["BTCUSDT"]) == 11 and market.report.files["BTCUSDT"].resampled_to == "4h"


def test_fingerprint_changes_with_one_value_and_is_stable_otherwise(tmp_path):
    bars, _ = load_one(kline_rows(), tmp_path / "BTCUSDT-1h.csv")
    again, _ = load_one(kline_rows(), tmp_path / "BTCUSDT-1h-b.csv")
    base = fingerprint({"BTCUSDT": bars, "ETHUSDT": bars})
    assert base == fingerprint({"ETHUSDT": again, "BTCUSDT": again}) and base.startswith("sha256:")
    changed = bars.copy()
    changed.iloc[100, changed.columns.get_loc("close")] += 1e-9
    assert fingerprint({"BTCUSDT": changed, "ETHUSDT": bars}) != base
    assert fingerprint({"BTCUSDT": bars, "ETHUSDT": bars.iloc[:-1]}) != base


# --- synthetic and real data ----------------------------------------------------------------------------------------

def test_synthetic_source_loads_canonical_bars():
    market = load_bars("synthetic", n_bars=24 * 20, seed=3)
    assert market.source == "synthetic" and len(market.bars) >= 2
    for frame in market.bars.values():
        assert str(frame.index.dtype) == "datetime64[ns, UTC]" and frame.index.is_unique
        assert len(frame) == 24 * 20 and {"open", "high", "low", "close", "volume", "gap_before"} <= set(frame.columns)
    assert load_bars("synthetic", n_bars=24 * 20, seed=3).fingerprint == market.fingerprint


@pytest.fixture(scope="module")
def real_market(tmp_path_factory):
    return load_bars(SHARED, cache_dir=tmp_path_factory.mktemp("cache"))


@needs_shared_data
def test_real_btc_2021_2025_has_14_missing_hours():
    market = load_bars(SHARED, symbols=["BTCUSDT"], start="2021-01-01", end="2025-12-31", cache_dir=False)
    bars, report = market.bars["BTCUSDT"], market.report.files["BTCUSDT"]
    slots = pd.date_range("2021-01-01", "2025-12-31 23:00", freq="1h", tz="UTC")
    assert len(slots) == 43_824 and len(bars) == 43_810 and report.missing_slots == 14
    assert bars.index.isin(slots).all() and bars["gap_before"].sum() == 14


@needs_shared_data
def test_real_all_symbols_load(real_market):
    assert len(real_market.bars) == 17 and sum(len(b) for b in real_market.bars.values()) > 1_000_000
    for symbol, frame in real_market.bars.items():
        assert frame.index.is_monotonic_increasing and frame.index.is_unique, symbol
        assert frame.index[-1] == pd.Timestamp("2025-12-31 23:00", tz="UTC"), symbol


@needs_shared_data
def test_real_btc_extra_columns_2019_to_2024_only(real_market):
    btc, eth = real_market.bars["BTCUSDT"], real_market.bars["ETHUSDT"]
    extras = ["quote_volume", "trades", "taker_buy_base", "taker_buy_quote"]
    assert set(extras) <= set(btc.columns) and not set(extras) & set(eth.columns)
    known = btc.index[btc["trades"].notna()]
    assert known[0].year == 2019 and known[-1].year == 2024
    late = load_bars(SHARED, symbols=["BTCUSDT"], start="2025-01-01", cache_dir=False).bars["BTCUSDT"]
    assert not set(extras) & set(late.columns)
