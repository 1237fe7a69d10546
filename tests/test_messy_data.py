"""Ordinary messy data through the prepare stage: zero-volume days, empty optional cells, symbols missing weeks or
listed later, a single symbol, target outages. Each case prepares with every feature defined (or rows excluded and
counted in `results/prepare.json`), and each check that fails names the feature, symbol and rows."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.features import base_features
from macd_nb.core.klines import DataError, example_klines, write_kline_dump
from macd_nb.core.prepare import check_prepared_table, load_table, prepare_run

N_BARS = 24 * 120   # 120 days: the 1d MACD warm-up takes 34 of them
FLOWS = ["volume", "quote_volume", "trades", "taker_buy_base", "taker_buy_quote"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MACD_NB_CACHE", str(tmp_path / "cache"))


def klines(seed: int, start: str = "2024-01-01") -> pd.DataFrame:
    return example_klines(N_BARS, start, seed=seed)


def flat_day(rows: pd.DataFrame, first: int, n: int = 24) -> pd.DataFrame:
    "An exchange day with no trading: zero volume and flat prices at the previous close, rows first .. first+n-1."
    rows = rows.copy()
    rows.loc[first:first + n - 1, ["open", "high", "low", "close"]] = rows.loc[first - 1, "close"]
    rows.loc[first:first + n - 1, FLOWS] = 0
    return rows


def prepare(tmp_path: Path, frames: dict[str, pd.DataFrame], timeframes=("1h",)) -> dict:
    "Write the frames as Binance dumps, run the prepare stage on them, return its record (as written)."
    folder = tmp_path / "klines"
    folder.mkdir()
    for symbol, rows in frames.items():
        write_kline_dump(rows, folder / f"{symbol}-1h.csv")
    config = profile_config("smoke", data_source=str(folder), symbols=list(frames), start=None, timeframes=list(timeframes))
    prepare_run(config, tmp_path / "run")
    return json.loads((tmp_path / "run" / "results" / "prepare.json").read_text())


def table_of(tmp_path: Path, timeframe: str = "1h") -> tuple[pd.DataFrame, dict]:
    table, summary = load_table(tmp_path / "run", timeframe)
    check_prepared_table(table, summary, timeframe)
    assert not table[summary["base_features"] + summary["cross_features"]].isna().any().any()
    return table, summary


def test_zero_volume_day_gives_neutral_values_counted(tmp_path):
    btc, eth = flat_day(klines(1), 24 * 80), flat_day(klines(2), 24 * 90)
    summary = prepare(tmp_path, {"BTCUSDT": btc, "ETHUSDT": eth})["timeframes"]["1h"]
    table, _ = table_of(tmp_path)
    assert summary["excluded_rows"]["rows"] == 0 and summary["rows"] == len(table) == 2065
    # bb_pctb_20: the 6 windows of 20 flat closes have std exactly 0 (per-window std; running sums left ~1e-12 there)
    assert summary["neutral_values"] == {"stoch_k_14": 11, "bb_pctb_20": 6, "range_pos_24": 1, "skew_24": 1, "volume_z_24": 1,
                                         "log_volume_ratio_1_24": 1, "volume_absret_corr_24": 1, "taker_buy_ratio": 24,
                                         "taker_imbalance_24": 1, "log_trade_size_ratio_24_168": 1}
    day = pd.date_range("2024-03-21", periods=24, freq="1h", tz="UTC")
    assert (table.loc[day, "taker_buy_ratio"] == 0.5).all() and table.loc[day[-1], "volume_z_24"] == 0.0
    assert summary["labels"][0]["tie"] == 36   # flat closes: undefined labels, counted as ties


def test_base_features_defined_on_flat_zero_volume_bars():
    rows = flat_day(klines(1), 24 * 80, n=24 * 3)   # three idle days
    frame = rows.assign(open_time=pd.to_datetime(rows["open_time"], unit="ms", utc=True)).set_index("open_time")
    features = base_features(frame[["open", "high", "low", "close"] + FLOWS])
    after = features.frame.iloc[features.warmup_bars:]
    assert not after.isna().any().any(), after.columns[after.isna().any()].tolist()
    assert features.neutral["taker_buy_ratio"].sum() == 72


def test_empty_optional_cells_exclude_and_count_rows(tmp_path):
    btc = klines(1).astype({"taker_buy_base": object})
    empty = np.sort(np.random.default_rng(0).choice(N_BARS, N_BARS // 200, replace=False))   # 0.5% of the cells
    btc.loc[empty, "taker_buy_base"] = ""
    record = prepare(tmp_path, {"BTCUSDT": btc, "ETHUSDT": klines(2)}, timeframes=("1h", "4h"))
    for timeframe in ("1h", "4h"):   # at 4h one empty hour empties its 4h bar: 1.9% of the bars, under 4 x 1%
        summary = record["timeframes"][timeframe]
        table, _ = table_of(tmp_path, timeframe)
        assert "taker_buy_ratio" in summary["base_features"]
        assert summary["excluded_rows"]["rows"] == 9 and summary["rows"] == len(table)
        assert summary["excluded_rows"]["by_feature"] == {"taker_buy_ratio": 9, "taker_buy_ratio_z_168": 9}
    assert record["timeframes"]["1h"]["rows"] == 2065 - 9
    hours = pd.to_datetime(klines(1)["open_time"].iloc[empty], unit="ms", utc=True)
    assert not table_of(tmp_path, "1h")[0].index.isin(hours).any()


def test_symbol_missing_three_weeks_excludes_rows_and_names_it(tmp_path):
    eth = klines(2).drop(index=range(24 * 60, 24 * 81))
    summary = prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": eth})["timeframes"]["1h"]
    table, _ = table_of(tmp_path)
    excluded = summary["excluded_rows"]
    assert excluded["rows"] == 654 and excluded["no_bar_of"] == {"ETHUSDT": 504}
    assert excluded["by_feature"]["eth_ret_1"] == 504 and excluded["by_feature"]["beta_btc_168"] == 637
    assert excluded["first_rows"][0] == "2024-03-01 00:00" and pd.Timestamp("2024-03-10", tz="UTC") not in table.index
    # three weeks is longer than max_gap_hours: the rows whose 168-bar windows still span ETH's gap go too
    after_gap = pd.Timestamp("2024-03-22 00:00", tz="UTC")
    assert summary["gap_exclusion"]["largest"][0] == {"symbol": "ETHUSDT", "first_missing": "2024-03-01 00:00",
                                                      "first_after": "2024-03-22 00:00", "missing_hours": 504}
    assert not ((table.index >= after_gap) & (table.index < after_gap + 167 * pd.Timedelta("1h"))).any()
    assert summary["gap_excluded_rows"] > 0 and summary["rows"] == 2065 - 654 - summary["gap_excluded_rows"]


def test_too_many_excluded_rows_is_a_data_error_naming_symbol_feature_rows(tmp_path):
    eth = klines(2).drop(index=range(24 * 60, 24 * 81))   # at 4h the 168-bar windows need four more weeks to refill
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": eth}, timeframes=("4h",))
    message = str(caught.value)
    assert message.startswith("BTCUSDT 4h: 276 of 517 rows after warm-up have an undefined feature (53.4%, limit 50%)")
    assert "beta_btc_168 (259 rows)" in message and "'2024-03-01 00:00'" in message
    assert "ETHUSDT has no bar on 126 of them" in message and "Remove ETHUSDT from `symbols`" in message


def test_one_symbol_prepares_without_cross_asset_features(tmp_path):
    record = prepare(tmp_path, {"BTCUSDT": klines(1)}, timeframes=("1h", "4h"))
    assert record["symbols"] == ["BTCUSDT"]
    for timeframe in ("1h", "4h"):
        summary = record["timeframes"][timeframe]
        table_of(tmp_path, timeframe)
        assert summary["cross_features"] == [] and len(summary["base_features"]) >= 70
        assert summary["cross_asset"] == "off: the data set has one symbol (BTCUSDT), so no cross-asset features"


def test_symbol_listed_later_moves_the_warm_up_and_says_why(tmp_path):
    eth = klines(2).iloc[24 * 40:]   # listed on 2024-02-10
    summary = prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": eth})["timeframes"]["1h"]
    table, _ = table_of(tmp_path)
    assert summary["warmup_set_by"] == {"feature": "beta_btc_168", "first_value": "2024-02-16 07:00:00+00:00"}
    assert table.index[0] == pd.Timestamp("2024-02-16 07:00", tz="UTC") and summary["excluded_rows"]["rows"] == 0


def test_target_outage_of_three_days(tmp_path):
    btc = klines(1).drop(index=range(24 * 70, 24 * 73))
    record = prepare(tmp_path, {"BTCUSDT": btc, "ETHUSDT": klines(2)})
    summary = record["timeframes"]["1h"]
    table, _ = table_of(tmp_path)
    assert record["data_report"]["files"]["BTCUSDT"]["largest_gaps"][0] == {"first_missing": "2024-03-11 00:00", "slots": 72}
    # 72 hours is longer than max_gap_hours: the 24 rows whose labels reach into it and the 167 whose windows span it go
    assert summary["rows"] == 2065 - 72 - 24 - 167 and summary["excluded_rows"]["rows"] == 0
    assert summary["gap_excluded_rows"] == 24 + 167 and summary["gap_exclusion"]["first_rows"][0] == "2024-03-10 00:00"
    assert summary["labels"][0]["gap"] == summary["labels"][3]["gap"] == 0   # labels across the outage: their rows excluded


def test_symbol_without_bars_in_the_target_range_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": klines(2, start="2023-01-01")})
    message = str(caught.value)
    assert message.startswith("BTCUSDT 1h: no row has every feature defined: feature(s) ['eth_ret_1'")
    assert "'ETHUSDT': '2023-01-01 .. 2023-04-30'" in message and "remove the symbols without bars" in message


def test_prepared_table_check_names_feature_and_rows(tmp_path):
    prepare(tmp_path, {"BTCUSDT": klines(1), "ETHUSDT": klines(2)})
    table, summary = table_of(tmp_path)
    broken = table.copy()
    broken.iloc[[3, 7], broken.columns.get_loc("rsi_14")] = np.nan
    with pytest.raises(DataError, match=r"features_1h.parquet: feature rsi_14 is undefined \(NaN\) on 2 of 2065 rows "
                                        r"\(first \['2024-02-04 02:00', '2024-02-04 06:00'\]; 1 feature\(s\) in all\)"):
        check_prepared_table(broken, summary, "features_1h.parquet")
    with pytest.raises(DataError, match="no rows"):
        check_prepared_table(table.iloc[:0], summary, "features_1h.parquet")
