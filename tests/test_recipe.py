"""The boosting recipe's settings (issue 24): a bag of boosters is one booster that averages its members, each fold's tree
count comes from its own and earlier folds only, and a stage run with both ships a model that reloads, converts to
ONNX and predicts what the stage scored; labels at longer horizons and their overlapping positions are exact; a signal
too rare in one symbol's rows is found by pooling every symbol's rows in the same folds."""
import json
from dataclasses import replace

import lightgbm as lgb
import numpy as np
import onnxruntime
import pandas as pd
import pytest

from macd_nb.core.config import profile_config
from macd_nb.core.labels import direction_labels
from macd_nb.core.validation import WalkForward
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.models.lgb import (LgbFoldTask, bin_once, binned_rows, lgb_fit_fold, lgb_params, lightgbm_to_onnx,
                                load_binned, merge_boosters, rounds_from_earlier_folds, run_lgb)
from macd_nb.models.backtest import held_positions, trade
from macd_nb.models.pooled import fold_windows, pool_tables, pooled_fold_rows, pooled_walk_forward, rare_event_tables
from macd_nb.models.protocol import direction_protocol, fold_rows

RECIPE = dict(gbm_rounds_rule="earlier_folds", gbm_rounds_window=3, gbm_seeds=3, gbm_bagging_fraction=0.7,
              gbm_feature_fraction=0.7, gbm_lambda_l2=1.0)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    "A prepared smoke run, its protocol's second fold as a task, and the run with the recipe's settings."
    run_dir = tmp_path_factory.mktemp("recipe")
    config = profile_config("smoke", **RECIPE)
    prepare_run(config, run_dir)
    table, summary = load_table(run_dir, "1h")
    protocol = direction_protocol(table, summary["base_features"], config)
    params = lgb_params(config)
    path = bin_once(protocol.X, protocol.folds[0].train_idx, params, run_dir / "cache" / "recipe.bin", protocol.feature_names)
    rows = fold_rows(protocol.folds, protocol.y, inner_fraction=config.validation.inner_valid_fraction,
                     purge=config.validation.purge_bars)[1]
    task = LgbFoldTask(str(path), rows, protocol.y[rows.fit_idx], protocol.y[rows.stop_idx], protocol.X[rows.val_idx],
                       params, config.gbm.rounds, config.gbm.early_stopping_rounds)
    return {"config": config, "run_dir": run_dir, "task": task, "run": run_lgb(config, run_dir)}


def test_a_bag_predicts_the_mean_raw_score_of_its_members(smoke):
    task = replace(smoke["task"], seeds=3)
    bag, count = lgb_fit_fold(task)
    members = [lgb_fit_fold(replace(task, params=task.params | {"seed": task.params["seed"] + k}, seeds=1))[0]
               for k in range(3)]
    raw = np.mean([m.predict(task.val_features, raw_score=True) for m in members], axis=0)
    np.testing.assert_allclose(bag.predict(task.val_features, raw_score=True), raw, rtol=0, atol=1e-12)
    assert bag.num_trees() == sum(m.best_iteration for m in members)   # each member up to its best iteration
    assert count == int(np.median([m.best_iteration for m in members]))
    assert np.abs(members[0].predict(task.val_features) - members[1].predict(task.val_features)).max() > 1e-3   # seeds differ
    assert merge_boosters(members[:1]).model_to_string().count("Tree=") == members[0].num_trees()


def test_a_fixed_count_fits_the_whole_window(smoke):
    "`rounds` set: no early stopping, the tail is training data too; the same booster as a plain fit on both parts."
    task = replace(smoke["task"], rounds=7)
    booster, count = lgb_fit_fold(task)
    assert count == booster.num_trees() == 7
    binned = load_binned(task.dataset_path, task.params)
    rows = np.r_[task.rows.fit_idx, task.rows.stop_idx]
    plain = lgb.train(task.params, binned_rows(binned, rows, np.r_[task.fit_label, task.stop_label], task.params), 7)
    np.testing.assert_array_equal(booster.predict(task.val_features), plain.predict(task.val_features))
    tail_only = lgb.train(task.params, binned_rows(binned, task.rows.fit_idx, task.fit_label, task.params), 7)
    assert not np.array_equal(booster.predict(task.val_features), tail_only.predict(task.val_features))


def test_tree_counts_come_from_earlier_folds_only():
    best = [31, 49, 4, 12, 36, 80]
    counts = rounds_from_earlier_folds(best, 3)
    assert counts == [31, 40, 31, 12, 12, 36]
    for k in range(len(best)):   # a later fold's count changes no earlier fold's
        later = best[:k + 1] + [1000] * (len(best) - k - 1)
        assert rounds_from_earlier_folds(later, 3)[:k + 1] == counts[:k + 1]


def test_the_stage_records_and_uses_the_earlier_fold_counts(smoke):
    record, window = smoke["run"].record, smoke["config"].gbm.rounds_window
    assert record["fold_rounds"] == rounds_from_earlier_folds(record["best_iterations"], window)
    assert record["refit_rounds"] == record["served_refit"]["refit_rounds"] == record["fold_rounds"][-1]
    assert record["served_refit"]["refit_trees"] >= record["served_refit"]["refit_rounds"]   # a bag of three
    saved = json.loads((smoke["run_dir"] / "results" / "lgb_1h.json").read_text())
    assert saved["params"]["bagging_fraction"] == 0.7 and saved["params"]["lambda_l2"] == 1.0


def test_a_bagged_stage_ships_a_model_that_reloads_and_exports(smoke):
    run = smoke["run"]
    booster = lgb.Booster(model_file=str(run.extras["model_path"]))
    assert booster.num_trees() == run.record["served_refit"]["refit_trees"]
    np.testing.assert_allclose(booster.predict(run.extras["test_features"]), run.extras["served_test_pred"], rtol=0, atol=1e-12)
    session = onnxruntime.InferenceSession(lightgbm_to_onnx(booster).SerializeToString(), providers=["CPUExecutionProvider"])
    x = run.extras["test_features"].astype(np.float64)
    onnx_p = session.run(None, {"features": x})[0].ravel()
    assert np.abs(onnx_p - booster.predict(x)).max() < 1e-6   # p_up is float32, as for any served booster
    assert ((onnx_p > 0.5) != (booster.predict(x) > 0.5)).sum() == 0


def test_horizon_labels_and_tranches_are_exact_on_a_known_path():
    "Labels 4 bars ahead on eight known closes, each signal held 4 bars as a quarter, and what the positions earn."
    close = np.array([100.0, 102, 101, 103, 104, 102, 105, 106])
    bars = pd.DataFrame({"close": close}, index=pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC"))
    labels = direction_labels(bars, [1, 4])
    np.testing.assert_allclose(labels["fwd_ret_4"][:4], np.log([104 / 100, 102 / 102, 105 / 101, 106 / 103]))
    np.testing.assert_array_equal(labels["y_4"], [1, np.nan, 1, 1, np.nan, np.nan, np.nan, np.nan])   # a tie, then the tail
    assert (labels["label_end_4"] == bars.index + pd.Timedelta(hours=5)).all()
    signals = np.nan_to_num(2 * labels["y_4"].to_numpy() - 1)   # perfect foresight of the 4-bar direction
    positions = held_positions(signals, 4)
    np.testing.assert_allclose(positions, [0.25, 0.25, 0.5, 0.75, 0.5, 0.5, 0.25, 0.0])
    trades = trade(positions, labels["fwd_ret_1"].to_numpy())
    bar_returns = np.r_[close[1:] / close[:-1] - 1, 0.0]   # the last bar has no next close
    np.testing.assert_allclose(trades.gross_log, np.log1p(positions * bar_returns))
    np.testing.assert_allclose(trades.turnover, [0.25, 0, 0.25, 0.25, 0.25, 0, 0.25, 0.25])


def test_a_signal_too_rare_for_one_symbol_is_found_by_the_pooled_model_only(tmp_path):
    "A flag on 0.5% of bars (up after 90% of them): one symbol's window holds too few for a leaf, 17 symbols' hold enough."
    tables = rare_event_tables(seed=3)
    names = ["flag", *(f"noise_{j}" for j in range(4))]
    pool, alone = pool_tables(tables, names), pool_tables({"SYM00": tables["SYM00"]}, names)
    times = tables["SYM00"].index
    folds = WalkForward(8, train_size=2000, purge=1).folds(len(times), label_end=tables["SYM00"]["label_end_1"], times=times)
    windows = fold_windows(folds, times)
    config = profile_config("smoke")
    settings = dict(num_boost_round=config.gbm.rounds, early_stopping_rounds=config.gbm.early_stopping_rounds,
                    inner_fraction=config.validation.inner_valid_fraction, rebin_every=4)
    for w in windows:   # no fold learns from a label that reaches its scored bars, on any symbol
        rows = pooled_fold_rows(pool, w, pool.y, inner_fraction=settings["inner_fraction"])
        assert pool.label_end[np.r_[rows.fit_idx, rows.stop_idx]].max() <= w.val_start <= pool.times[rows.val_idx].min()
    params = lgb_params(config, threads=1)
    lift = {}
    for name, p in (("pooled", pool), ("alone", alone)):
        pred, _ = pooled_walk_forward(p, windows, params, tmp_path, **settings)
        rows = p.rows_of("SYM00")
        rows = rows[np.isfinite(pred[rows])]
        flagged = p.X[rows, 0] == 1
        lift[name] = pred[rows][flagged].mean() - pred[rows][~flagged].mean()
        assert len(rows) == sum(len(f.val_idx) for f in folds)   # the symbol's own folds' bars, pooled or not
    assert lift["pooled"] > 0.2 and abs(lift["alone"]) < 0.05, lift
