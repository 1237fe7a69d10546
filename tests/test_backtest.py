"""Stage 2.1, the economic evaluation: the accounting is exact, execution cannot see the bar it predicts, the band's
threshold is never chosen on the bars it scores, and the stage runs on a real run directory."""
import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.core.validation import as_utc_datetime64
from macd_nb.export.summary import summary_table
from macd_nb.models.backtest import (band_walk_forward, break_even_cost, held_positions, run_backtest, signal_positions,
                                     trade)
from macd_nb.models.baseline import run_baseline
from macd_nb.models.lgb import run_lgb


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    "The synthetic market of the smoke profile, prepared: forward log returns and the 1-bar labels of the target."
    run_dir = tmp_path_factory.mktemp("market")
    config = profile_config("smoke")
    prepare_run(config, run_dir)
    table, _ = load_table(run_dir, "1h")
    table = table[np.isfinite(table["fwd_ret_1"])]
    return config, run_dir, table


def test_perfect_foresight_earns_the_known_gross_return_and_pays_exactly_the_costs(market):
    config, _, table = market
    returns = table["fwd_ret_1"].to_numpy()
    trades = trade(signal_positions(table["y_1"].fillna(0.5).to_numpy(), "long_short"), returns)
    known = np.log1p(np.abs(np.expm1(returns))).sum()   # the right side of every bar that moved
    assert trades.gross_log.sum() == pytest.approx(known, rel=1e-12)
    for cost in (0.0, 10.0, 20.0):
        charged = np.log1p(-cost * 1e-4 * trades.turnover).sum()
        assert trades.net_log(cost).sum() == pytest.approx(known + charged, rel=1e-12)
    assert trades.turnover.sum() > len(returns) / 2   # it flips often: the cost is real money here


def test_a_constant_signal_is_buy_and_hold_less_one_entry_cost(market):
    _, _, table = market
    returns = table["fwd_ret_1"].to_numpy()
    for variant in ("long_flat", "long_short", "band"):
        trades = trade(signal_positions(np.full(len(returns), 0.8), variant), returns)
        assert trades.net_log(10.0).sum() == pytest.approx(returns.sum() + np.log(1 - 1e-3), rel=1e-12, abs=1e-12)
        assert trades.turnover.sum() == 1.0


def test_execution_cannot_use_the_bar_it_predicts(market):
    "A signal shifted one bar into the future is the perfect foresight above; the same one bar late earns nothing alike."
    _, _, table = market
    returns = table["fwd_ret_1"].to_numpy()
    up = np.where(returns > 0, 0.9, 0.1)
    on_time = trade(signal_positions(up, "long_short"), returns).gross_log.sum()
    known_at_the_bar = trade(signal_positions(np.r_[0.5, up[:-1]], "long_short"), returns).gross_log.sum()
    assert on_time == pytest.approx(np.log1p(np.abs(np.expm1(returns))).sum())
    assert abs(known_at_the_bar) < 0.2 * on_time   # a position earns the return after its bar, not the bar's own


def test_tranches_hold_each_signal_for_the_horizon():
    signals = np.array([1, 0, 0, 0, -1, -1, 0, 0], dtype=float)
    np.testing.assert_allclose(held_positions(signals, 2), [0.5, 0.5, 0, 0, -0.5, -1, -0.5, 0])
    np.testing.assert_array_equal(held_positions(signals, 1), signals)


def test_break_even_cost_is_where_growth_reaches_zero(market):
    _, _, table = market
    returns = table["fwd_ret_1"].to_numpy()
    trades = trade(signal_positions(np.where(returns > 0, 0.9, 0.1), "long_short"), returns)
    cost = break_even_cost(trades)
    assert trades.net_log(cost).sum() == pytest.approx(0.0, abs=1e-9)
    assert trades.net_log(cost * 0.9).sum() > 0 > trades.net_log(cost * 1.1).sum()


def test_band_thresholds_are_never_chosen_on_the_block_they_score(market):
    config, _, table = market
    rng = np.random.default_rng(1)
    pred = 0.5 + 0.04 * np.tanh(rng.normal(size=len(table)))
    times, label_end = as_utc_datetime64(table.index), as_utc_datetime64(table["label_end_1"])
    returns = table["fwd_ret_1"].to_numpy()
    signals, blocks = band_walk_forward(pred, returns, times, label_end, config, 1)
    for k, block in enumerate(blocks):
        assert block["last_train_row"] < block["first_scored_row"]
        assert pd.Timestamp(block["last_train_label_end"]) < pd.Timestamp(block["start"])
        start, stop = block["first_scored_row"], block["first_scored_row"] + block["n_scored"]
        changed_pred, changed_returns = pred.copy(), returns.copy()     # the block's own predictions and outcomes
        changed_pred[start:] = 1 - changed_pred[start:]
        changed_returns[start:] = -changed_returns[start:]
        _, changed = band_walk_forward(changed_pred, changed_returns, times, label_end, config, 1)
        assert changed[k]["threshold"] == block["threshold"] and changed[k]["fraction"] == block["fraction"], k
    assert np.isnan(signals[:blocks[0]["first_scored_row"]]).all()


def test_the_stage_writes_its_record_and_the_report_shows_after_costs(market, tmp_path):
    config, _, _ = market
    prepare_run(config, tmp_path)
    run_baseline(config, tmp_path), run_lgb(config, tmp_path)
    record = run_backtest(config, tmp_path, "1h")
    assert record["stage"] == "2.1" and set(record["models"]) == {"baseline", "lgb"}
    assert record["controls"]["always_long_equals_buy_and_hold"]
    for model in record["models"]:
        headline = record["metrics"]["after_costs"][model]
        assert headline["break_even_bp"] >= 0 and len(headline["sharpe_ci95"]) == 2
        assert len(record["oof"][f"{model}/band"]["sharpe_by_cost"]) == len(config.backtest.cost_grid_bp)
    assert record["oof"]["always_long"]["total_return"] == pytest.approx(record["oof"]["buy_and_hold"]["total_return"])
    table = summary_table(tmp_path)
    assert "after costs" in table and "| backtest |" not in table
