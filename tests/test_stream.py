"""The streaming features equal the batch features (within 1e-9) on consecutive bars of the shared real data: 500 bars
of BTCUSDT at 1h with all 17 symbols, another target (ETHUSDT, whose reference is BTC), 4h and 1d; and they equal the
bounded-window live path (`live_rows`) bar by bar as the market grows."""
import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.prepare import features_at
from macd_nb.serve.live import live_rows
from macd_nb.serve.stream import StreamingFeatures, stream_batch_difference

from conftest import needs_shared_data


@needs_shared_data
@pytest.mark.parametrize("target, timeframe, n_bars", [("BTCUSDT", "1h", 500), ("ETHUSDT", "1h", 300),
                                                       ("BTCUSDT", "4h", 120), ("BTCUSDT", "1d", 40)])
def test_streamed_features_equal_the_batch_features(real_market, target, timeframe, n_bars):
    config, market = real_market
    config = profile_config("full", data_source=config.data.source, target=target)
    batch = features_at(market, config, timeframe)[1].frame
    bars = batch.index[-n_bars:]
    assert (bars[-1] - bars[0]) / (bars[1] - bars[0]) < n_bars * 1.05            # consecutive (a rare gap aside)
    worst = stream_batch_difference(market, config, bars, timeframe, batch)    # also checks names and order
    assert len(worst) == batch.shape[1] > 100
    assert worst.max() <= 1e-9, worst.sort_values().tail()


@needs_shared_data
def test_streamed_rows_follow_a_growing_market_like_live_rows(real_market):
    "As the shadow loop feeds it: the market grows by one hour at a time; the rows and a sequence's table match live_rows."
    config, market = real_market
    end = market["BTCUSDT"].index[-1]
    engine = StreamingFeatures(config, "1h", keep=24)
    for bar in pd.date_range(end - pd.Timedelta(hours=5), end, freq="1h"):
        window = {s: b.loc[:bar] for s, b in market.items()}
        row = engine.catch_up(window, bar)
        reference = live_rows(window, config, "1h", n_rows=24)
        np.testing.assert_allclose(row, reference.iloc[-1].to_numpy(), rtol=0, atol=1e-9)
    table = engine.table()
    assert list(table.columns) == list(reference.columns) and table.index.equals(reference.index)
    np.testing.assert_allclose(table.to_numpy(), reference.to_numpy(), rtol=0, atol=1e-9)


@needs_shared_data
def test_a_bar_the_market_lacks_is_refused(real_market):
    config, market = real_market
    engine = StreamingFeatures(config, "1h")
    bar = market["BTCUSDT"].index[-1]
    with pytest.raises(ValueError, match="no bar of BTCUSDT at"):
        engine.catch_up({s: b.loc[:bar - pd.Timedelta(hours=1)] for s, b in market.items()}, bar)
