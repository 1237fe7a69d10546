"""Does retraining help? The promotion rule takes each branch; a policy simulation serves every policy on the same bars,
never with a model that learned a served bar's label, compares challenger and champion out of sample only, follows the
rule it is given, and degrades the never-retrained model after a planted change of regime; on the real BTCUSDT bars a
small version holds the same checks."""
import numpy as np
import pandas as pd
import pytest

from conftest import needs_shared_data
from macd_nb.core.config import STABLE_BOOSTING, profile_config
from macd_nb.core.prepare import timeframe_table
from macd_nb.core.synthetic import synthetic_market
from macd_nb.core.validation import auc
from macd_nb.models.lgb import rounds_from_earlier_folds
from macd_nb.pipeline.policy_simulation import POLICIES, policy_table, simulate_retrain_policies
from macd_nb.pipeline.retrain_policy import (Market, RecipeFit, WalkForwardEvidence, promotion_decision, ranks_within,
                                             retrain_schedule, training_rows)

CHANGE = pd.Timestamp("2024-06-01", tz="UTC")


# --- the rule ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gain, ci, gates, margin, expected, says", [
    (0.004, (-0.003, 0.011), True, 0.005, "promote", "not worse"),
    (0.000, (-0.005, 0.005), True, 0.005, "keep", "may be worse"),          # lower bound exactly -margin: not above it
    (0.001, (-0.012, 0.014), True, 0.005, "keep", "may be worse"),
    (0.001, (-0.012, 0.014), True, 0.020, "promote", "not worse"),
    (0.030, (0.010, 0.050), False, 0.005, "keep", "fails its gates"),
    (-0.002, (-0.004, -0.001), True, 0.010, "keep", "significantly worse"),  # within the margin, still never promoted
    (float("nan"), (float("nan"), float("nan")), True, 0.005, "keep", "no comparison"),
])
def test_promotion_decision_branches(gain, ci, gates, margin, expected, says):
    decision, why = promotion_decision(gain, ci, gates, margin=margin)
    assert (decision, says in why) == (expected, True), why
    if np.isfinite(gain): assert f"{gain:+.4f}" in why and f"{ci[0]:+.4f}" in why   # the numbers are in the reason


def test_promotion_decision_refuses_nonsense():
    with pytest.raises(ValueError, match="margin"): promotion_decision(0.0, (-0.01, 0.01), True, margin=-0.01)
    with pytest.raises(ValueError, match="lower bound is above"): promotion_decision(0.0, (0.01, -0.01), True)


def test_schedule_and_training_window():
    year = retrain_schedule("2025-01-01", "2026-01-01", every="MS", history_periods=3, folds_per_period=4)
    assert len(year.points) == 12 and len(year.fit_times) == 14 * 4 + 1
    assert year.fit_times.is_monotonic_increasing and year.fit_times[0] == pd.Timestamp("2024-10-01", tz="UTC")
    hours = pd.date_range("2025-01-01", periods=10, freq="h").to_numpy(dtype="datetime64[ns]")
    rows = training_rows(np.ones(10), hours + np.timedelta64(2, "h"), "2025-01-01 06:00", train_bars=3, expanding=False)
    assert rows.tolist() == [2, 3, 4]   # labels known by 06:00 end at bar 04:00; the newest 3


def test_ranks_within_each_fit_remove_the_scale_of_each_fit_only():
    fit, scores = np.array([0, 0, 0, 1, 1]), np.array([0.2, 0.9, 0.5, 0.51, 0.50])
    assert ranks_within(fit, scores).tolist() == [1 / 3, 1.0, 2 / 3, 1.0, 0.5]
    y = np.array([0, 1, 1, 1, 0])
    assert auc(y, ranks_within(fit, scores)) != auc(y, scores)      # pooled, the two fits' levels mix


# --- a simulation on the synthetic market with a planted change of regime ----------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    "A small simulation: 2 symbols, the signal reversed on CHANGE, weekly retrain points from 2024-04-15 to 2024-08-01."
    symbols = ("BTCUSDT", "ETHUSDT")
    bars = synthetic_market(symbols=symbols, n_bars=24 * 215, start="2024-01-01", seed=0, edge=2.0, regime_change=CHANGE).bars
    config = profile_config("smoke", symbols=list(symbols), bootstrap_samples=200)
    table, summary = timeframe_table(bars, config, "1h")
    market = Market.from_table(table, summary["base_features"])
    simulation = simulate_retrain_policies(market, config, "2024-04-15", "2024-08-01", every="14D", history_periods=2,
                                           folds_per_period=2, threads=2, progress=False)
    return market, config, simulation


def test_every_policy_is_served_on_the_same_bars_by_models_that_never_saw_them(synthetic):
    market, _, simulation = synthetic
    served, record = simulation.served, simulation.record
    expected = market.times[market.rows("2024-04-15", "2024-08-01")]
    assert np.array_equal(served.index.tz_convert(None).to_numpy(), expected)     # the same bars, all of them
    for policy in POLICIES:
        assert served[policy].notna().all() and record["policies"][policy]["n_bars"] == len(served)
        assert (served[f"{policy}_labels_end"] <= served.index).all(), policy
        assert (served[f"{policy}_fitted"] <= served.index).all(), policy
    for fit in simulation.fits:
        assert fit.labels_end <= fit.fit_time and market.label_end[fit.train_rows].max() <= np.datetime64(fit.fit_time.tz_convert(None))
    # the policies do what they say
    points = simulation.schedule.points
    assert (served["never_fitted"] == points[0]).all()
    assert (served["always_fitted"] == points[served["period"].to_numpy()]).all()
    assert record["policies"]["always"]["promotions"] == len(points) - 1 and record["policies"]["never"]["retrains"] == 0


def test_comparisons_are_out_of_sample_and_follow_the_rule(synthetic):
    _, _, simulation = synthetic
    compared = 0
    for policy in ("gated", "monitor"):
        for d in simulation.record["decisions"][policy]:
            if policy == "monitor" and not d.get("triggers"):
                assert d["decision"] == "keep" and "comparison" not in d
                continue
            c, at = d["comparison"], pd.Timestamp(d["at"])
            assert pd.Timestamp(c["challenger_labels_end_max"]) <= pd.Timestamp(c["last_bar"]) < at   # training label ends < scored bars
            assert pd.Timestamp(c["first_bar"]) >= pd.Timestamp(c["champion_fitted"])   # bars since the champion's fit
            assert (d["decision"], d["why"]) == promotion_decision(c["gain"], tuple(c["gain_ci95"]), d["gate"]["passed"],
                                                                     margin=simulation.record["rule"]["margin"])
            compared += 1
    assert compared >= len(simulation.schedule.points) - 1


def test_the_planted_change_degrades_the_old_model_and_retraining_recovers(synthetic):
    _, _, simulation = synthetic
    served, record = simulation.served, simulation.record
    after = served.index >= CHANGE + pd.Timedelta(days=14)   # past the features' memory of the old regime
    assert auc(served.loc[after, "y"], served.loc[after, "never"]) < 0.45
    assert auc(served.loc[after, "y"], served.loc[after, "always"]) > 0.55
    assert record["policies"]["always"]["gain_vs_never"]["ci95"][0] > 0
    assert served["gated_fitted"].iloc[-1] > CHANGE                        # the rule promoted a model of the new regime
    table = policy_table(record)
    assert list(table.index) == [POLICIES[p] for p in POLICIES] and table.iloc[1, 1].startswith("+")


def test_a_prediction_that_saw_its_own_label_is_refused(synthetic):
    market, _, simulation = synthetic
    honest = simulation.fits[3]
    leaky = RecipeFit(honest.fit_time, honest.train_rows, honest.fit_time + pd.Timedelta(days=2), honest.best_iteration,
                      honest.first_row, honest.pred)   # claims labels known two days after it started serving
    rows = market.rows(honest.fit_time, honest.fit_time + pd.Timedelta(days=1))
    with pytest.raises(AssertionError, match="its own label"):
        WalkForwardEvidence(market, [leaky]).predict(rows)
    with pytest.raises(AssertionError, match="before the model"):
        honest.predict_rows(rows - 50)                                     # bars before the model existed
    WalkForwardEvidence(market, [honest]).predict(rows)                    # the honest fit passes


def test_reusing_the_fits_varies_only_the_rule(synthetic):
    market, config, simulation = synthetic
    kwargs = dict(every="14D", history_periods=2, folds_per_period=2, progress=False)
    lenient = simulate_retrain_policies(market, config, "2024-04-15", "2024-08-01", margin=1.0, fits=simulation.fits, **kwargs)
    gated = [d for d in lenient.record["decisions"]["gated"]]
    assert all(d["decision"] == "promote" for d in gated if d["gate"]["passed"] and d["comparison"]["gain_ci95"][1] >= 0)
    assert lenient.record["policies"]["never"]["auc"] == simulation.record["policies"]["never"]["auc"]
    pooled = simulate_retrain_policies(market, config, "2024-04-15", "2024-08-01", comparison="pooled", fits=simulation.fits,
                                       **kwargs)
    for d in pooled.record["decisions"]["gated"]:
        c = d["comparison"]
        assert (c["gain"], c["gain_ci95"]) == (c["gain_pooled"], c["gain_pooled_ci95"])
        assert d["decision"] == promotion_decision(c["gain_pooled"], tuple(c["gain_pooled_ci95"]), d["gate"]["passed"])[0]
    with pytest.raises(ValueError, match="another schedule"):
        simulate_retrain_policies(market, config, "2024-04-15", "2024-08-01", fits=simulation.fits[1:], **kwargs)


def test_the_stable_recipe_takes_each_fits_trees_from_the_fits_before_it(synthetic):
    "With the full profile's recipe, a fit's tree count is the median tail-stopped count of it and the fits before it."
    market, config, _ = synthetic
    stable = profile_config("smoke", symbols=config.data.symbols, bootstrap_samples=200,
                            **(STABLE_BOOSTING | {"gbm_rounds_window": 3, "gbm_min_data_in_leaf": 100}))
    simulation = simulate_retrain_policies(market, stable, "2024-04-15", "2024-08-01", every="28D", history_periods=1,
                                           folds_per_period=1, threads=2, progress=False)
    tails = [f.tail_iteration for f in simulation.fits]
    assert all(t >= 1 for t in tails) and len(tails) >= 4
    assert [f.best_iteration for f in simulation.fits] == rounds_from_earlier_folds(tails, 3)
    for fit in simulation.fits:
        assert np.isfinite(fit.pred).all() and fit.labels_end <= fit.fit_time
    assert all(np.isfinite(simulation.record["policies"][p]["auc"]) for p in POLICIES)


# --- real data ------------------------------------------------------------------------------------------------------------

@needs_shared_data
def test_a_small_simulation_on_real_btcusdt(shared_data):
    from macd_nb.core.data import load_bars
    config = profile_config("full", data_source=str(shared_data), symbols=["BTCUSDT"], train_bars=24 * 120,
                            bootstrap_samples=200, n_jobs=1)
    bars = load_bars(config.data.source, symbols=["BTCUSDT"], start="2025-03-01", end="2025-12-31", timeframe="1h",
                     cache_dir=False).bars
    table, summary = timeframe_table(bars, config, "1h")
    market = Market.from_table(table, summary["base_features"])
    simulation = simulate_retrain_policies(market, config, "2025-10-01", "2026-01-01", every="MS", history_periods=1,
                                           folds_per_period=2, threads=2, progress=False)
    record, served = simulation.record, simulation.served
    assert len(simulation.schedule.points) == 3 and record["window"]["n_bars"] > 2000
    for policy in POLICIES:
        assert 0.4 < record["policies"][policy]["auc"] < 0.6                   # hourly direction: near 0.5, honestly
        assert (served[f"{policy}_labels_end"] <= served.index).all()
        assert np.isfinite(record["policies"][policy]["after_costs"]["sharpe"])
    for d in record["decisions"]["gated"]:
        assert pd.Timestamp(d["comparison"]["challenger_labels_end_max"]) <= pd.Timestamp(d["comparison"]["last_bar"]) < pd.Timestamp(d["at"])
