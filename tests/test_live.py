"""The live path's features equal the batch features (within 1e-9) on 500 consecutive bars of the shared real data."""
from functools import partial

import numpy as np
import pytest

from macd_nb.core.parallel import parallel_map
from macd_nb.core.prepare import features_at
from macd_nb.serve.live import live_batch_difference, live_rows, live_window

from conftest import needs_shared_data


@needs_shared_data
@pytest.mark.parametrize("timeframe, n_bars", [("1h", 500), ("4h", 60)])
def test_live_features_equal_the_batch_features(real_market, timeframe, n_bars):
    config, market = real_market
    batch = features_at(market, config, timeframe)[1].frame
    bars = batch.index[-n_bars:]
    assert (bars[-1] - bars[0]) / (bars[1] - bars[0]) < n_bars * 1.05            # consecutive (a rare gap aside)
    chunks = np.array_split(np.asarray(bars), 2)
    worst = parallel_map(partial(live_batch_difference, market, config, timeframe=timeframe, batch=batch), chunks, n_jobs=2)
    worst = np.maximum(*worst)
    assert len(worst) == batch.shape[1] > 100
    assert worst.max() <= 1e-9, worst.sort_values().tail()


@needs_shared_data
def test_the_window_is_the_derived_one_and_a_short_one_is_not_exact(real_market, monkeypatch):
    config, market = real_market
    batch = features_at(market, config, "1h")[1].frame
    import macd_nb.serve.live as live
    monkeypatch.setattr(live, "live_window", lambda timeframe="1h", tolerance=1e-12: live_window(timeframe, tolerance) // 4)
    assert live_batch_difference(market, config, batch.index[-2:], batch=batch).max() > 1e-9
    monkeypatch.undo()
    rows = live_rows(market, config, n_rows=96)
    assert len(rows) == 96 and rows.index[-1] == batch.index[-1]
