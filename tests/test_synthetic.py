"""Tests of the synthetic market (macd_nb.core.synthetic): contract, stylized facts, planted signal, controls."""
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from macd_nb.core.synthetic import (DEFAULT_SYMBOLS, SyntheticParams, expected_auc, macd_histogram, oracle_auc,
                               synthetic_market)

TWO_YEARS = 24 * 365 * 2
ALTS = DEFAULT_SYMBOLS[1:]


@pytest.fixture(scope="module")
def market():
    "Default market, 2 years of 1h bars, seed 0."
    return synthetic_market(n_bars=TWO_YEARS, seed=0)


@pytest.fixture(scope="module")
def flat_market():
    "Same market without planted predictability."
    return synthetic_market(n_bars=TWO_YEARS, seed=0, edge=0.0)


@pytest.fixture(scope="module")
def log_returns(market):
    return pd.DataFrame({s: np.log(b.close).diff() for s, b in market.bars.items()}).iloc[1:]


def own_past_features(close: pd.Series) -> pd.DataFrame:
    "Simple scale-free features of one symbol's own past: MACD histogram, 1/4/12-bar returns over rolling std, RSI."
    log_close = np.log(close)
    r = log_close.diff()
    vol = r.rolling(48).std()
    gain, loss = r.clip(lower=0).ewm(alpha=1 / 14).mean(), (-r).clip(lower=0).ewm(alpha=1 / 14).mean()
    return pd.DataFrame({"macd_hist": macd_histogram(log_close.to_numpy()) / vol, "r1": r / vol,
                         "r4": log_close.diff(4) / vol, "r12": log_close.diff(12) / vol, "rsi": gain / (gain + loss) - 0.5})


def logistic_oos_auc(features: pd.DataFrame, close: pd.Series, shuffle_seed=None) -> float:
    "Fit LogisticRegression on the first 60% of bars, return the AUC on the last 40% (next-bar direction)."
    went_up = close.shift(-1) > close
    usable = features.notna().all(axis=1) & close.shift(-1).notna()
    X, y = features[usable].to_numpy(), went_up[usable].to_numpy()
    n_train = int(0.6 * len(y))
    y_train = y[:n_train] if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(y[:n_train])
    model = LogisticRegression().fit(X[:n_train], y_train)
    return roc_auc_score(y[n_train:], model.predict_proba(X[n_train:])[:, 1])


def test_deterministic_per_seed():
    a, b = synthetic_market(n_bars=1500, seed=7), synthetic_market(n_bars=1500, seed=7)
    for symbol in DEFAULT_SYMBOLS:
        pd.testing.assert_frame_equal(a.bars[symbol], b.bars[symbol])
    pd.testing.assert_frame_equal(a.up_prob, b.up_prob)
    assert a.nominal_oracle_auc == b.nominal_oracle_auc


def test_different_seeds_differ():
    a, b = synthetic_market(n_bars=500, seed=1), synthetic_market(n_bars=500, seed=2)
    for symbol in DEFAULT_SYMBOLS:
        assert not np.allclose(a.bars[symbol].close.to_numpy(), b.bars[symbol].close.to_numpy())
    assert not np.allclose(a.up_prob.to_numpy(), b.up_prob.to_numpy())


def test_shorter_market_is_prefix_of_longer():
    short, long = synthetic_market(n_bars=400, seed=3), synthetic_market(n_bars=900, seed=3)
    for symbol in DEFAULT_SYMBOLS:
        pd.testing.assert_frame_equal(short.bars[symbol], long.bars[symbol].iloc[:400])
    pd.testing.assert_frame_equal(short.up_prob, long.up_prob.iloc[:400])


def test_any_symbols_and_timeframe():
    m = synthetic_market(symbols=("AAA", "BBB"), n_bars=200, timeframe="4h", start="2022-03-01", seed=5)
    assert list(m.up_prob.columns) == ["AAA", "BBB"]
    assert (m.bars["AAA"].index.to_series().diff().dropna() == pd.Timedelta("4h")).all()
    assert m.bars["BBB"].index[0] == pd.Timestamp("2022-03-01", tz="UTC")
    with pytest.raises(ValueError, match="at least 2"):
        synthetic_market(symbols=("BTCUSDT",))
    with pytest.raises(ValueError, match="edge"):
        synthetic_market(edge=-0.5)


def test_bar_contract_and_sanity(market):
    expected_columns = ["open", "high", "low", "close", "volume", "quote_volume", "trades",
                        "taker_buy_base", "taker_buy_quote", "gap_before"]
    for symbol, bars in market.bars.items():
        assert list(bars.columns) == expected_columns
        assert bars.index.name == "open_time" and bars.index.dtype == pd.DatetimeTZDtype("ns", "UTC")
        assert bars.index.is_unique and (bars.index.to_series().diff().dropna() == pd.Timedelta("1h")).all()
        assert bars.index[0] == pd.Timestamp("2021-01-01", tz="UTC") and len(bars) == TWO_YEARS
        assert bars.gap_before.dtype == np.int64 and (bars.gap_before == 0).all()
        floats = bars.drop(columns="gap_before")
        assert (floats.dtypes == np.float64).all() and np.isfinite(floats.to_numpy()).all()
        assert (floats > 0).all().all(), f"{symbol}: non-positive values"
        np.testing.assert_array_equal(bars.open.to_numpy()[1:], bars.close.to_numpy()[:-1])
        assert (bars.low <= np.minimum(bars.open, bars.close)).all() and (bars.high >= np.maximum(bars.open, bars.close)).all()
        assert (bars.quote_volume >= bars.volume * bars.low * (1 - 1e-12)).all()
        assert (bars.quote_volume <= bars.volume * bars.high * (1 + 1e-12)).all()
        assert (bars.trades == np.round(bars.trades)).all() and (bars.trades >= 1).all()
        taker_share = bars.taker_buy_base / bars.volume
        assert (taker_share < 1).all() and 0.47 < taker_share.mean() < 0.53
        r = np.log(bars.close).diff()
        assert taker_share.corr(r) > 0.3, "taker-buy share must follow the same bar's return"
        assert np.log(bars.volume * bars.close).corr(r.abs()) > 0.2, "volume must follow |return|"
    starts = {s: b.open.iloc[0] for s, b in market.bars.items()}
    assert starts["BTCUSDT"] == 30_000 and starts["ETHUSDT"] == 1_000
    assert 0.004 < market.bars["BTCUSDT"].close.pipe(np.log).diff().std() < 0.012  # hourly BTC vol


def test_fat_tails_and_vol_clustering(log_returns):
    assert (log_returns.kurt() > 1).all(), log_returns.kurt()
    abs_lag1 = log_returns.abs().apply(lambda s: s.autocorr(1))
    assert (abs_lag1 > 0.1).all(), abs_lag1


def test_cross_correlation_and_lead_lag(log_returns):
    assert log_returns["BTCUSDT"].corr(log_returns["ETHUSDT"]) > 0.4
    lead_lag = {s: log_returns[s].shift(-1).corr(log_returns["BTCUSDT"]) for s in ALTS}
    assert all(v > 0.03 for v in lead_lag.values()), lead_lag


def test_oracle_auc_calibrated(market):
    for symbol in DEFAULT_SYMBOLS:
        nominal, measured = market.nominal_oracle_auc[symbol], oracle_auc(market, symbol)
        assert 0.56 <= nominal <= 0.62 and 0.56 <= measured <= 0.62, (symbol, nominal, measured)
        assert abs(nominal - measured) < 0.02, (symbol, nominal, measured)
    assert abs(market.nominal_oracle_auc["BTCUSDT"] - oracle_auc(market, "BTCUSDT")) < 0.01


def test_up_prob_is_calibrated(market):
    "Realised up-rate matches the stated probability in bins, pooled over symbols."
    close = pd.DataFrame({s: b.close for s, b in market.bars.items()})
    went_up = (close.shift(-1) > close).to_numpy()[:-1].ravel()
    prob = market.up_prob.to_numpy()[:-1].ravel()
    bins = np.digitize(prob, np.quantile(prob, [0.2, 0.4, 0.6, 0.8]))
    for b in range(5):
        assert abs(went_up[bins == b].mean() - prob[bins == b].mean()) < 0.015


def test_edge_zero_has_no_signal(flat_market):
    assert np.all(flat_market.up_prob.to_numpy() == 0.5)
    for symbol in DEFAULT_SYMBOLS:
        assert abs(oracle_auc(flat_market, symbol) - 0.5) < 0.015
        assert abs(flat_market.nominal_oracle_auc[symbol] - 0.5) < 1e-12
    close = flat_market.bars["BTCUSDT"].close
    assert abs(logistic_oos_auc(own_past_features(close), close) - 0.5) < 0.02


def test_edge_scales_signal():
    half, full = synthetic_market(n_bars=3000, seed=0, edge=0.5), synthetic_market(n_bars=3000, seed=0, edge=1.0)
    for symbol in DEFAULT_SYMBOLS:
        assert 0.52 < half.nominal_oracle_auc[symbol] < full.nominal_oracle_auc[symbol] - 0.02


def test_expected_auc_matches_sampled_labels():
    rng = np.random.default_rng(0)
    prob = np.clip(0.5 + 0.12 * rng.standard_normal(300_000), 0.01, 0.99)
    prob_with_ties = np.round(prob, 2)
    for p in (prob, prob_with_ties):
        labels = rng.random(p.size) < p
        assert abs(expected_auc(p) - roc_auc_score(labels, p)) < 0.004
    assert abs(expected_auc(np.full(100, 0.3)) - 0.5) < 1e-12  # all ties: no information
    assert abs(expected_auc([0.2, 0.8]) - 0.64 / 0.68) < 1e-12  # worked by hand: P(correct order | one of each)


def test_logistic_regression_finds_own_signal(market):
    close = market.bars["BTCUSDT"].close
    features = own_past_features(close)
    assert logistic_oos_auc(features, close) >= 0.53
    shuffled = np.mean([logistic_oos_auc(features, close, shuffle_seed=k) for k in range(10)])
    assert abs(shuffled - 0.5) < 0.02


def test_cross_asset_features_add_signal(market, log_returns):
    z_returns = log_returns / log_returns.rolling(48).std()
    cross = {"BTCUSDT": z_returns[list(ALTS)].mean(axis=1).rename("alt_index_r1"),
             "ETHUSDT": z_returns["BTCUSDT"].rename("btc_r1")}
    for symbol, cross_feature in cross.items():
        close = market.bars[symbol].close
        own = own_past_features(close)
        assert logistic_oos_auc(own.join(cross_feature), close) > logistic_oos_auc(own, close) + 0.005, symbol


def test_slow_part_grows_with_horizon(market):
    "The slow (trend) drift part predicts 24-bar direction much better than next-bar direction."
    log_close = pd.DataFrame({s: np.log(b.close) for s, b in market.bars.items()})
    slow = market.drift_parts["slow"].to_numpy()

    def auc_at(h):
        went_up = (log_close.shift(-h) > log_close).to_numpy()[:-h].ravel()
        return roc_auc_score(went_up, slow[:-h].ravel())

    assert auc_at(24) > auc_at(1) + 0.03


def test_params_validated():
    with pytest.raises(ValueError, match="t_df"):
        SyntheticParams(t_df=1.5)
