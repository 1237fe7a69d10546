"Tests of macd_nb.core.features: future invariance of every feature, counts, degradation, higher-timeframe alignment."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.features import (FeatureInputError, FeatureFrame, attach_higher_timeframe, base_features,
                                   completed_higher_bars, feature_table, macd)
from macd_nb.core.market_features import (build_features, cross_asset_features, future_invariance_violations,
                                          truncate_market)

from conftest import SHARED_DATA as SHARED, needs_shared_data
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")
N_BARS = 24 * 46        # enough for the 1d MACD (35 completed days) to have ~10 days of values


def _with_gaps(bars: pd.DataFrame, drop: list[pd.Timestamp]) -> pd.DataFrame:
    "Remove rows (missing hours) and recompute gap_before."
    bars = bars.drop(index=[t for t in drop if t in bars.index]).copy()
    slot = np.asarray((bars.index - bars.index[0]) // pd.Timedelta("1h"))
    bars["gap_before"] = (np.diff(slot, prepend=-1) - 1).astype("int64")
    return bars


def make_market(n_bars: int = N_BARS, seed: int = 0, symbols=SYMBOLS) -> dict[str, pd.DataFrame]:
    "Correlated random-walk OHLCV market; some symbols carry taker/trade columns; a few hours are missing."
    rng = np.random.default_rng(seed)
    times = pd.date_range("2022-03-01", periods=n_bars, freq="1h", tz="UTC", unit="ns", name="open_time")
    common = rng.standard_t(4, n_bars) * 0.004
    market = {}
    for k, symbol in enumerate(symbols):
        vol = 0.006 * np.exp(0.3 * np.sin(np.arange(n_bars) / 200 + k))
        log_close = np.log(50.0 * (k + 1)) + np.cumsum(0.6 * common + vol * rng.standard_normal(n_bars))
        close = np.exp(log_close)
        open_ = np.r_[close[0], close[:-1]] * np.exp(0.0005 * rng.standard_normal(n_bars))
        spread = np.abs(rng.normal(0, vol, (2, n_bars)))
        volume = rng.lognormal(3, 0.5, n_bars)
        bars = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * np.exp(spread[0]),
                             "low": np.minimum(open_, close) * np.exp(-spread[1]), "close": close,
                             "volume": volume}, index=times)
        if k % 2 == 0:
            bars["taker_buy_base"] = volume * rng.uniform(0.3, 0.7, n_bars)
            bars["trades"] = np.round(volume * rng.uniform(5, 15, n_bars))
        random_drop = list(times[rng.choice(np.arange(5, n_bars), 3, replace=False)])
        market[symbol] = _with_gaps(bars, random_drop)
    # deterministic gaps in the BTC target: one hour inside a 4h bucket, and a whole day's 4h bucket
    day = times[0].normalize() + pd.Timedelta(days=40)
    market["BTCUSDT"] = _with_gaps(market["BTCUSDT"], [day + pd.Timedelta("6h"),
                                                       day + pd.Timedelta(days=2, hours=13)])
    return market


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    return make_market()


def invariance_cuts(index: pd.DatetimeIndex) -> list[pd.Timestamp]:
    "Cut times: during warm-up, inside a 4h bucket, inside a 1d bucket, at 4h and 1d closes, at a missing hour."
    day = index[0].normalize() + pd.Timedelta(days=41)
    cuts = [index[300],                                     # in warm-up
            day + pd.Timedelta("13h"),                      # middle of a 4h (12-16) and of a 1d bucket
            day + pd.Timedelta("1h"),                       # early in a 4h and 1d bucket
            day + pd.Timedelta("3h"),                       # last hour of a 4h bucket (4h bar closes with it)
            day + pd.Timedelta("23h"),                      # last hour of a day (1d bar closes with it)
            day + pd.Timedelta(days=1, hours=38),           # deep in a later 1d bucket
            day + pd.Timedelta(days=1, hours=13),           # a missing hour of the target (cut falls in a gap)
            index[-2]]
    return cuts


def assert_future_invariant(compute, market: dict[str, pd.DataFrame], cuts: list[pd.Timestamp]) -> set[str]:
    "assert_allclose of compute(truncated market) vs compute(full market) at rows <= each cut; names checked on values."
    full = compute(market)
    checked_on_values = set()
    for cut in cuts:
        truncated = compute(truncate_market(market, cut))
        expected = full.loc[:cut]
        assert list(truncated.columns) == list(full.columns), f"cut {cut}: columns differ"
        assert truncated.index.equals(expected.index), f"cut {cut}: rows differ"
        for name in full.columns:
            np.testing.assert_allclose(truncated[name].to_numpy(), expected[name].to_numpy(), rtol=1e-12, atol=1e-14,
                                       equal_nan=True, err_msg=f"feature {name} looks ahead (cut {cut})")
            if expected[name].notna().iloc[-24:].any(): checked_on_values.add(name)
    return checked_on_values


@pytest.mark.parametrize("target", ["BTCUSDT", "SOLUSDT"])
def test_every_feature_is_future_invariant(market, target):
    def compute(m): return build_features(m, target).frame
    full = build_features(market, target)
    checked = assert_future_invariant(compute, market, invariance_cuts(market[target].index))
    never_valued = set(full.frame.columns) - checked
    assert not never_valued, f"features never compared on real values: {sorted(never_valued)}"
    assert len(full.base) >= 70 and len(full.cross) >= 20


def test_peeking_feature_is_caught(market):
    "A feature shifted by -1 (the next bar's value) must fail the invariance check."
    def peeking(m):
        frame = build_features(m, "BTCUSDT").frame
        frame["next_ret_1"] = frame["ret_1"].shift(-1)
        return frame
    cuts = invariance_cuts(market["BTCUSDT"].index)[1:3]
    with pytest.raises(AssertionError, match="next_ret_1"):
        assert_future_invariant(peeking, market, cuts)
    assert list(future_invariance_violations(peeking, market, cuts)) == ["next_ret_1"]


def test_unfinished_higher_timeframe_bar_is_caught(market):
    "Attaching a 4h bar at its open time (before it closed) must fail the invariance check at a mid-bucket cut."
    def leaky(m):
        bars = m["BTCUSDT"]
        higher = completed_higher_bars(bars, "1h", "4h")
        # a leaky alternative: resample every bucket (complete or not) and attach it from its first hour
        everything = bars["close"].groupby(bars.index.floor("4h")).last().to_frame()
        leaked = attach_higher_timeframe(bars.index, everything, "1h", "1h")
        honest = attach_higher_timeframe(bars.index, higher[["close"]], "1h", "4h")
        return pd.DataFrame({"leaky_4h_close": leaked["close"], "honest_4h_close": honest["close"]})
    day = market["BTCUSDT"].index[0].normalize() + pd.Timedelta(days=10)
    violations = future_invariance_violations(leaky, market, [day + pd.Timedelta("13h")])
    assert list(violations) == ["leaky_4h_close"]


@pytest.mark.parametrize("target", ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
def test_counts_specs_and_no_constant_or_duplicate_columns(market, target):
    features = build_features(market, target)
    assert isinstance(features, FeatureFrame)
    assert len(features.base) >= 70 and len(features.cross) >= 20
    assert list(features.frame.columns) == features.base + features.cross
    assert [s.name for s in features.specs] == list(features.frame.columns)
    assert all(s.formula and s.group for s in features.specs)
    table = feature_table(features.specs)
    assert list(table.columns) == ["name", "group", "formula"] and table["name"].is_unique
    assert features.frame.index.equals(market[target].index)
    assert (features.frame.dtypes == "float64").all()
    assert not np.isinf(features.frame.to_numpy()).any()
    after = features.frame.iloc[features.warmup_bars:]
    assert len(after) > 100 and after.iloc[0].notna().all()
    assert features.frame.iloc[: features.warmup_bars].isna().any(axis=1).all()
    constant = after.columns[after.std() < 1e-12]
    assert not len(constant), f"constant columns: {list(constant)}"
    correlation = after.corr().abs().to_numpy()
    pairs = np.argwhere(np.triu(correlation, 1) > 0.9999)
    assert not len(pairs), [(after.columns[i], after.columns[j]) for i, j in pairs]
    assert after.T.duplicated().sum() == 0


def test_taker_features_dropped_when_absent_or_mostly_nan(market):
    btc = market["BTCUSDT"]
    assert "taker_buy_ratio" in base_features(btc).base
    absent = base_features(btc.drop(columns=["taker_buy_base", "trades"]))
    assert absent.dropped["taker_buy_ratio"] == "taker_buy_base column absent"
    assert absent.dropped["trades_z_168"] == "trades column absent"
    assert not any(name.startswith(("taker", "trades")) for name in absent.frame.columns)
    mostly_nan = btc.copy()
    mostly_nan.loc[mostly_nan.index[::20], "taker_buy_base"] = np.nan           # 5% of rows
    degraded = base_features(mostly_nan)
    for name in ("taker_buy_ratio", "taker_buy_ratio_z_168", "taker_imbalance_24"):
        assert degraded.dropped[name].startswith("taker_buy_base missing for 5.0% of rows"), degraded.dropped[name]
        assert name not in degraded.frame.columns
    assert "trades_z_168" in degraded.frame.columns
    few_nan = btc.copy()
    few_nan.loc[few_nan.index[[500, 600]], "taker_buy_base"] = np.nan          # well under 1%: kept, never filled
    kept = base_features(few_nan)
    assert "taker_buy_ratio" in kept.frame.columns
    assert kept.frame["taker_buy_ratio"].iloc[[500, 600]].isna().all()


def test_higher_timeframe_features_change_only_at_completed_boundaries(market):
    bars = market["BTCUSDT"]
    frame = base_features(bars).frame
    close_hour = (frame.index + pd.Timedelta("1h")).hour
    for higher, closes_here in (("4h", close_hour % 4 == 0), ("1d", close_hour == 0)):
        for kind in ("line", "signal", "hist"):
            column = frame[f"macd_{higher}_{kind}"]
            changed = column.ne(column.shift()) & column.notna()
            assert changed.sum() > 5
            assert closes_here[changed.to_numpy()].all(), f"macd_{higher}_{kind} changes inside a bucket"
    # the 4h bucket with a missing hour (day 40, 04:00-08:00) never appears: its last-hour row keeps the old value
    day = bars.index[0].normalize() + pd.Timedelta(days=40)
    hist = frame["macd_4h_hist"]
    assert hist.loc[day + pd.Timedelta("7h")] == hist.loc[day + pd.Timedelta("3h")]
    assert hist.loc[day + pd.Timedelta("11h")] != hist.loc[day + pd.Timedelta("7h")]
    # the day with that gap produces no 1d bar: the 1d value stays the same through its closing hour
    daily = frame["macd_1d_hist"]
    assert daily.loc[day + pd.Timedelta("23h")] == daily.loc[day - pd.Timedelta("1h")]
    # values equal the indicator on completed 4h bars, seen first on the bucket's last hour
    completed = completed_higher_bars(bars, "1h", "4h")
    line, signal, _ = macd(completed["close"], 12, 26, 9)
    bucket = completed.index[-5]
    np.testing.assert_allclose(frame.loc[bucket + pd.Timedelta("3h"), "macd_4h_line"],
                               line.loc[bucket] / completed.loc[bucket, "close"], rtol=1e-12)
    assert frame.loc[bucket + pd.Timedelta("2h"), "macd_4h_line"] != frame.loc[bucket + pd.Timedelta("3h"), "macd_4h_line"]


def test_cross_features_for_btc_target_are_informative(market):
    cross = cross_asset_features(market, "BTCUSDT")
    after = cross.frame.iloc[cross.warmup_bars:]
    assert not any(name.startswith("btc_ret") or name == "btc_macd_hist" for name in cross.cross)
    assert "target is BTCUSDT" in cross.dropped["btc_ret_1"]
    for name in ("beta_btc_72", "beta_btc_168", "corr_btc_72", "corr_btc_168", "btc_minus_target_ret_1",
                 "btc_minus_target_ret_24"):
        assert after[name].std() > 1e-6, name
    assert "ETHUSDT" in next(s.formula for s in cross.specs if s.name == "beta_btc_72")
    eth_ret = np.log(market["ETHUSDT"]["close"]).diff().reindex(cross.frame.index)
    btc_ret = np.log(market["BTCUSDT"]["close"]).diff()
    np.testing.assert_allclose(cross.frame["btc_minus_target_ret_1"], eth_ret - btc_ret, equal_nan=True)
    # without ETH the reference becomes the equal-weight index; eth_* are dropped with the reason
    no_eth = {s: b for s, b in market.items() if s != "ETHUSDT"}
    fallback = cross_asset_features(no_eth, "BTCUSDT")
    assert fallback.dropped["eth_ret_1"] == "ETHUSDT not in market"
    assert fallback.frame.iloc[fallback.warmup_bars:]["beta_btc_168"].std() > 1e-6
    assert "equal-weight index" in next(s.formula for s in fallback.specs if s.name == "beta_btc_168")


def test_other_symbols_aligned_by_time_without_forward_fill(market):
    target_index = market["SOLUSDT"].index
    eth = market["ETHUSDT"]
    missing_eth = target_index.difference(eth.index)
    assert len(missing_eth) > 0
    cross = cross_asset_features(market, "SOLUSDT")
    assert cross.frame.loc[missing_eth, "eth_ret_1"].isna().all()
    shared = target_index.intersection(eth.index)[200:]
    expected = np.log(eth["close"] / eth["close"].shift(4)).loc[shared]
    np.testing.assert_allclose(cross.frame.loc[shared, "eth_ret_4"], expected, rtol=1e-12)


def test_bad_input_fails_with_a_message(market):
    with pytest.raises(KeyError, match="XRPUSDT"):
        build_features(market, "XRPUSDT")
    with pytest.raises(ValueError, match="at least 2 symbols"):
        cross_asset_features({"BTCUSDT": market["BTCUSDT"]}, "BTCUSDT")
    with pytest.raises(ValueError, match="missing required columns"):
        base_features(market["BTCUSDT"].drop(columns="volume"))
    assert len(build_features({"BTCUSDT": market["BTCUSDT"]}, "BTCUSDT", cross_asset=False).cross) == 0


def load_shared(symbol: str) -> pd.DataFrame:
    "A canonical bar frame from the shared headered CSV (test-only loader)."
    raw = pd.read_csv(SHARED / f"{symbol}-1h.csv.gz")
    index = pd.to_datetime(raw.pop("open_time"), unit="ms", utc=True).rename("open_time")
    bars = raw.drop(columns="close_time").set_axis(index).astype("float64")
    bars = bars[~bars.index.duplicated()].sort_index().dropna(axis=1, how="all")
    slot = np.asarray((bars.index - bars.index[0]) // pd.Timedelta("1h"))
    return bars.assign(gap_before=(np.diff(slot, prepend=-1) - 1).astype("int64"))


@needs_shared_data
def test_real_binance_bars():
    market = {s: load_shared(s) for s in ("BTCUSDT", "ETHUSDT", "BNBUSDT")}
    full = build_features(market, "BTCUSDT")
    assert "taker_buy_ratio" in full.dropped                       # mostly empty before 2022 in this dump
    assert len(full.base) >= 70 and len(full.cross) >= 20
    assert not np.isinf(full.frame.to_numpy()).any()
    recent = {s: b.loc["2024-01-01":"2024-04-30"] for s, b in market.items()}
    def compute(m): return build_features(m, "BTCUSDT").frame
    cut = pd.Timestamp("2024-04-20 13:00", tz="UTC")
    assert future_invariance_violations(compute, recent, [cut]) == {}


def test_synthetic_market_features_are_future_invariant():
    synthetic = pytest.importorskip("macd_nb.core.synthetic")
    market = synthetic.synthetic_market(n_bars=24 * 45, seed=3).bars
    features = build_features(market, "DOGEUSDT")
    assert len(features.base) >= 70 and len(features.cross) >= 20
    index = market["DOGEUSDT"].index
    cuts = [index[-60] + pd.Timedelta("1h") * k for k in (0, 11)]
    assert future_invariance_violations(lambda m: build_features(m, "DOGEUSDT").frame, market, cuts) == {}


def test_feature_list_is_decided_by_the_declared_inputs_not_by_the_window(market):
    "BTC's trade counts stop in mid-2024 in the reference dump: the declared list must not depend on the dates loaded."
    btc = market["BTCUSDT"].copy()
    late = btc.index >= btc.index[len(btc) // 2]
    btc.loc[late, ["taker_buy_base", "trades"]] = np.nan
    early = btc.loc[~late]
    assert base_features(early).base != base_features(btc).base          # exploration: the window decides (the old way)
    assert base_features(early, inputs=[]).base == base_features(btc, inputs=[]).base   # declared: the same list
    with pytest.raises(FeatureInputError, match=r"feature input 'taker_buy_base': taker_buy_base missing for 50\.0% of rows"):
        base_features(btc, inputs=["taker_buy_base", "trades"])


def test_prepared_table_is_checked_against_its_declared_features(tmp_path):
    from macd_nb.core.config import profile_config
    from macd_nb.core.prepare import load_table, prepare_run
    from macd_nb.core.rundir import CorruptArtifact, RunPaths, write_parquet
    prepare_run(profile_config("smoke", symbols=["BTCUSDT", "ETHUSDT"], n_bars=24 * 60, n_folds=2, train_bars=24 * 20), tmp_path)
    table, summary = load_table(tmp_path, "1h")
    path = RunPaths(tmp_path).features("1h")
    table.drop(columns=[summary["base_features"][3]]).to_parquet(path)      # behind the writer's back: refused as corrupt
    with pytest.raises(CorruptArtifact, match="features_1h.parquet: corrupt"):
        load_table(tmp_path, "1h")
    write_parquet(path, table.drop(columns=[summary["base_features"][3]]))   # through the writer: the columns are checked
    with pytest.raises(ValueError, match=rf"features_1h.parquet: .*missing \['{summary['base_features'][3]}'\], extra \[\]"):
        load_table(tmp_path, "1h")
