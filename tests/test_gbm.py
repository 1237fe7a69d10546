"""Gradient-boosting base models (stages 1.1, 1.4, XGBoost and CatBoost): signal found out of fold, controls hold, the binned
fast path leaks nothing and changes nothing, parallel equals serial, artifacts load back, and the real data runs."""
import json
from functools import partial
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from catboost import CatBoostClassifier

from macd_nb.core.config import profile_config
from macd_nb.models.protocol import direction_protocol, fold_rows
from macd_nb.core.rundir import read_json
from macd_nb.models.lgb import (bin_once, binned_rows, lgb_fit_predict_fold, lgb_params,
                         lgb_walk_forward, load_binned, LgbFoldTask, LgbModel, rounds_from_earlier_folds, run_lgb)
from macd_nb.core.prepare import load_table, prepare_run
from macd_nb.models.xgb import XgbModel, save_features, xgb_params, xgb_walk_forward
from macd_nb.models.catboost import CatBoostModel

from conftest import SHARED_DATA as SHARED, needs_shared_data


MODELS = {"lgb": LgbModel, "cross": partial(LgbModel, cross_asset=True), "xgb": XgbModel, "catboost": CatBoostModel}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, quick_run_copy):
    """`make run`'s quick run, every stage through the runner: the run test_end_to_end_quick checks, built once and
    cached (the two files share one build). Its LightGBM, cross-asset LightGBM, XGBoost and CatBoost result records."""
    config = profile_config("quick")
    run_dir = quick_run_copy(tmp_path_factory.mktemp("gbm") / "quick")
    records = {name: read_json(run_dir / "results" / f"{make(config).model}_1h.json") for name, make in MODELS.items()}
    return {"config": config, "run_dir": run_dir, **records}


@pytest.fixture(scope="module")
def quick_protocol(quick_run):
    "The quick run's protocol (base features), cut to its first 4 folds, with parameters and a binned table."
    config, run_dir = quick_run["config"], quick_run["run_dir"]
    table, summary = load_table(run_dir, "1h")
    protocol = direction_protocol(table, summary["base_features"], config)
    protocol.folds = protocol.folds[:4]
    params = lgb_params(config)
    path = bin_once(protocol.X, protocol.folds[0].train_idx, params, Path(run_dir) / "cache" / "test.bin",
                    protocol.feature_names)
    return config, protocol, params, path


def test_lgb_and_cross_asset_find_the_signal(quick_run):
    single, cross = quick_run["lgb"]["metrics"], quick_run["cross"]["metrics"]
    assert single["oof_auc_ci95"][0] > 0.5, single
    assert cross["oof_auc_ci95"][0] > 0.5, cross
    assert cross["oof_auc"] > single["oof_auc"], (cross["oof_auc"], single["oof_auc"])
    assert single["n_folds"] == cross["n_folds"] == quick_run["config"].validation.n_folds and single["n_oof"] == cross["n_oof"] > 5000


def test_xgb_finds_the_signal(quick_run):
    metrics = quick_run["xgb"]["metrics"]
    assert metrics["oof_auc_ci95"][0] > 0.5, metrics
    assert metrics["n_oof"] == quick_run["lgb"]["metrics"]["n_oof"]   # same rows scored: they line up for stacking


def test_catboost_finds_the_signal_on_the_same_rows(quick_run):
    record = quick_run["catboost"]
    assert record["metrics"]["oof_auc_ci95"][0] > 0.5, record["metrics"]
    assert record["metrics"]["n_oof"] == quick_run["lgb"]["metrics"]["n_oof"] and record["stage"] == "1.6"
    assert len(record["best_iterations"]) == quick_run["config"].validation.n_folds


def test_shuffled_labels_give_no_signal_and_the_leak_is_flagged(quick_run):
    for name in ("lgb", "cross", "xgb", "catboost"):
        controls = quick_run[name]["controls"]
        assert abs(controls["shuffled_label_auc"] - 0.5) <= 0.02, (name, controls["shuffled_label_auc"])
        assert controls["planted_leak_flagged"], name


def test_result_json_has_the_shared_shape(quick_run):
    run_dir = Path(quick_run["run_dir"])
    for file, stage, count in [("lgb_1h.json", "1.1", None), ("lgb_cross_1h.json", "1.4", "+"),
                               ("xgb_1h.json", "1.5", None)]:
        record = json.loads((run_dir / "results" / file).read_text())
        assert record["stage"] == stage
        for key in ("val_auc_mean", "fold_auc", "oof_auc", "oof_auc_ci95", "n_oof", "n_folds", "test_auc",
                    "test_auc_ci95", "n_test"):
            assert key in record["metrics"], (file, key)
        n_folds = quick_run["config"].validation.n_folds
        assert len(record["best_iterations"]) == n_folds and len(record["metrics"]["fold_auc"]) == n_folds
        assert set(record["timings_s"]) >= {"prepare", "folds", "refit", "controls", "total"}
        assert record["data_fingerprint"] and record["versions"]["lightgbm"] and record["seed"] == 0
        assert record["gates"][0]["name"] == "val_auc_mean" and "created" in record
    cross = json.loads((run_dir / "results" / "lgb_cross_1h.json").read_text())
    single = json.loads((run_dir / "results" / "lgb_1h.json").read_text())
    assert cross["n_features"] == len(cross["features"]) > single["n_features"] == len(single["features"])
    assert cross["features"][:single["n_features"]] == single["features"]
    assert quick_run["lgb"]["gates"][0]["threshold"] == quick_run["config"].gates["lgb_val_auc_mean"]
    assert quick_run["cross"]["gates"][0]["threshold"] == quick_run["config"].gates["cross_asset_val_auc"]


def _first_window_model(X, bin_rows, y, params, path=None):
    "Model string of a short fit on `bin_rows`, binned with edges from `bin_rows` (path given) or from all rows."
    if path is not None: dataset = load_binned(bin_once(X, bin_rows, params, path, [f"f{j}" for j in range(X.shape[1])]), params)
    else: dataset = lgb.Dataset(X, label=np.zeros(len(X)), params=params).construct()
    window = binned_rows(dataset, bin_rows, np.nan_to_num(y[bin_rows]), params)
    return lgb.train(params, window, 10).model_to_string(), [dataset.feature_num_bin(j) for j in range(X.shape[1])]


def test_bin_edges_come_from_the_first_training_window_only(quick_protocol, tmp_path):
    "Changing every row after the first training window leaves the bins (and a model fitted on that window) alone."
    _, protocol, params, _ = quick_protocol
    first_window = protocol.folds[0].train_idx
    changed = protocol.X.copy()
    later = slice(first_window[-1] + 1, None)
    changed[later] = changed[later] * 5 + 3
    original = _first_window_model(protocol.X, first_window, protocol.y, params, tmp_path / "a.bin")
    assert original == _first_window_model(changed, first_window, protocol.y, params, tmp_path / "b.bin")
    # the same check has teeth: bins fitted on all rows do move when the later rows change
    assert (_first_window_model(protocol.X, first_window, protocol.y, params)[0]
            != _first_window_model(changed, first_window, protocol.y, params)[0])


def test_fast_path_equals_a_plain_fit_with_the_same_bins(quick_protocol):
    "subset() of the saved binary table predicts what Datasets built from raw rows (same bin reference) predict."
    config, protocol, params, path = quick_protocol
    first_window = protocol.folds[0].train_idx
    reference = lgb.Dataset(protocol.X[first_window], label=np.zeros(len(first_window)), params=params,
                            free_raw_data=False)
    for rows in fold_rows(protocol.folds, protocol.y, inner_fraction=config.validation.inner_valid_fraction,
                          purge=config.validation.purge_bars)[:3]:
        task = LgbFoldTask(str(path), rows, protocol.y[rows.fit_idx], protocol.y[rows.stop_idx],
                           protocol.X[rows.val_idx], params, config.gbm.rounds, config.gbm.early_stopping_rounds)
        fast_pred, fast_best = lgb_fit_predict_fold(task)
        fit = lgb.Dataset(protocol.X[rows.fit_idx], protocol.y[rows.fit_idx], reference=reference, params=params)
        stop = lgb.Dataset(protocol.X[rows.stop_idx], protocol.y[rows.stop_idx], reference=reference, params=params)
        plain = lgb.train(params, fit, config.gbm.rounds, valid_sets=[stop],
                          callbacks=[lgb.early_stopping(config.gbm.early_stopping_rounds, verbose=False)])
        assert plain.best_iteration == fast_best
        np.testing.assert_allclose(plain.predict(protocol.X[rows.val_idx], num_iteration=fast_best), fast_pred, atol=1e-6)


def test_processes_and_serial_give_identical_predictions(quick_protocol, tmp_path):
    config, protocol, params, path = quick_protocol
    settings = dict(num_boost_round=config.gbm.rounds, early_stopping_rounds=config.gbm.early_stopping_rounds,
                    inner_fraction=config.validation.inner_valid_fraction, purge=config.validation.purge_bars)
    serial, serial_best = lgb_walk_forward(protocol, params, path, n_jobs=1, **settings)
    parallel, parallel_best = lgb_walk_forward(protocol, params, path, n_jobs=2, **settings)
    np.testing.assert_array_equal(serial.oof_pred, parallel.oof_pred)
    assert serial_best == parallel_best and np.isfinite(serial.oof_pred).sum() > 0
    features = save_features(protocol.X, tmp_path / "features.npy")
    xgb_serial, _ = xgb_walk_forward(protocol, xgb_params(config), features, n_jobs=1, **settings)
    xgb_parallel, _ = xgb_walk_forward(protocol, xgb_params(config), features, n_jobs=2, **settings)
    np.testing.assert_array_equal(xgb_serial.oof_pred, xgb_parallel.oof_pred)
    walks = []
    for n_jobs in (1, 2):
        catboost = CatBoostModel(config.replace(n_jobs=n_jobs))
        catboost.features_path = features
        walks.append(catboost.walk_forward(protocol, protocol.y)[0].oof_pred)
    np.testing.assert_array_equal(*walks)


def test_artifacts_are_native_and_load_back(quick_run, tmp_path):
    "Each saved model, loaded by its own library, predicts the test rows exactly as the serving window fitted again does."
    config, run_dir = quick_run["config"], Path(quick_run["run_dir"])
    table, summary = load_table(run_dir, "1h")
    def served_again(name):   # the shipped refit, done again here as the stage did it
        spec = MODELS[name](config)
        protocol = direction_protocol(table, spec.feature_names(summary), config)
        spec.prepare(protocol, tmp_path / name)
        return spec.refit(protocol, protocol.serving_fold, None)
    for name, model_file in [("lgb", "lgb_1h.txt"), ("cross", "lgb_cross_1h.txt")]:
        again = served_again(name)
        booster = lgb.Booster(model_file=str(run_dir / "models" / model_file))
        np.testing.assert_array_equal(booster.predict(again.extras["test_features"]), again.test_pred)
    again, booster = served_again("xgb"), xgb.Booster()
    booster.load_model(str(run_dir / "models" / "xgb_1h.json"))
    features = xgb.DMatrix(again.extras["test_features"], feature_names=quick_run["xgb"]["features"])
    np.testing.assert_array_equal(booster.predict(features), again.test_pred)   # the saved file is the shipped model
    assert json.loads((run_dir / "models" / "xgb_1h.json").read_text())["learner"]
    again, model = served_again("catboost"), CatBoostClassifier()
    model.load_model(str(run_dir / "models" / "catboost_1h.cbm"), format="cbm")
    np.testing.assert_array_equal(model.predict_proba(again.extras["test_features"])[:, 1], again.test_pred)
    for oof_file in ("lgb_1h.parquet", "lgb_cross_1h.parquet", "xgb_1h.parquet", "catboost_1h.parquet"):
        oof = pd.read_parquet(run_dir / "oof" / oof_file)
        assert list(oof.columns) == ["y", "pred", "fold", "train_label_end"] and oof.index.name == "open_time" and str(oof.index.tz) == "UTC"
        assert len(oof) == quick_run["lgb"]["metrics"]["n_oof"] and oof["pred"].between(0, 1).all()


def test_shipped_models_are_trained_the_way_they_were_validated(quick_run, tmp_path):
    """Two more folds per model, each as long as a fold's window and fitted as a fold: the validated refit ends before the
    test period (which it scores), the shipped one at the newest labelled bar; the saved file is the shipped one."""
    config, run_dir = quick_run["config"], Path(quick_run["run_dir"])
    hour = pd.Timedelta(hours=1)
    table, summary = load_table(run_dir, "1h")
    newest_labelled = table.index[table[f"y_{config.validation.label_horizon}"].notna()][-1]
    for name in ("lgb", "cross", "xgb"):
        record = quick_run[name]
        test_start = pd.Timestamp(record["window"]["test_start"])
        for key in ("validated_fold", "deployment"):
            window = record[key]
            first, last = pd.Timestamp(window["first_bar"]), pd.Timestamp(window["last_bar"])
            assert (last - first) / hour < config.validation.train_bars and window["n_rows"] <= config.validation.train_bars
        validated, shipped = record["validated_fold"], record["deployment"]
        assert pd.Timestamp(validated["labels_end"]) <= test_start, (name, validated)
        assert (test_start - pd.Timestamp(validated["last_bar"])) / hour <= config.validation.purge_bars + config.validation.embargo_bars + 2
        assert pd.Timestamp(shipped["last_bar"]) == newest_labelled and shipped["serve_window"] == "newest", (name, shipped)
        test_file = pd.read_parquet(run_dir / "test" / f"{record['model']}_1h.parquet")   # scored by the validated refit
        assert (test_file["train_label_end"] == pd.Timestamp(validated["labels_end"])).all()
    protocol = direction_protocol(table, summary["base_features"], config)
    params = lgb_params(config) | {"num_threads": 2}
    def fold_fit(fold, tag):   # what a walk-forward fold does with this window
        rows = fold_rows([fold], protocol.y, inner_fraction=config.validation.inner_valid_fraction,
                         purge=config.validation.purge_bars)[0]
        binned = bin_once(protocol.X, fold.train_idx, params, tmp_path / f"{tag}.bin", protocol.feature_names)
        task = LgbFoldTask(str(binned), rows, protocol.y[rows.fit_idx], protocol.y[rows.stop_idx],
                           protocol.X[protocol.scored_test_idx], params, config.gbm.rounds, config.gbm.early_stopping_rounds)
        return lgb_fit_predict_fold(task)
    validated_pred, validated_best = fold_fit(protocol.validated_fold, "validated")
    test_pred = pd.read_parquet(run_dir / "test" / "lgb_1h.parquet")["pred"].to_numpy()
    np.testing.assert_allclose(test_pred, validated_pred, atol=1e-12)   # the test score's model
    assert validated_best == quick_run["lgb"]["refit_rounds"]
    served_pred, served_best = fold_fit(protocol.serving_fold, "served")
    saved = lgb.Booster(model_file=str(run_dir / "models" / "lgb_1h.txt"))
    assert saved.num_trees() == served_best == quick_run["lgb"]["served_refit"]["refit_rounds"]
    np.testing.assert_allclose(saved.predict(protocol.X[protocol.scored_test_idx]), served_pred, atol=1e-12)
    booster = xgb.Booster()
    booster.load_model(str(run_dir / "models" / "xgb_1h.json"))
    assert booster.num_boosted_rounds() == quick_run["xgb"]["served_refit"]["refit_rounds"]


@pytest.mark.slow
@needs_shared_data
def test_full_lightgbm_protocol_on_real_btc(tmp_path):
    "The full profile's LightGBM stage on the shared BTCUSDT hourly data: 357 folds, its adopted recipe, OOF AUC with a CI."
    config = profile_config("full", timeframes=["1h"], data_source=str(SHARED), n_jobs=2, threads_per_job=1,
                            bootstrap_samples=300)
    prepare_run(config, tmp_path)
    record = run_lgb(config, tmp_path).record
    metrics = record["metrics"]
    assert metrics["n_folds"] == 357 and len(record["best_iterations"]) == 357
    # the stable recipe: each fold's count from its own and earlier folds' tails, bags of five boosters
    assert record["fold_rounds"] == rounds_from_earlier_folds(record["best_iterations"], config.gbm.rounds_window)
    assert config.gbm.seeds == 5 and record["served_refit"]["refit_trees"] > record["served_refit"]["refit_rounds"]
    lo, hi = metrics["oof_auc_ci95"]
    assert lo <= metrics["oof_auc"] <= hi and metrics["n_oof"] > 25_000
    assert json.loads((tmp_path / "results" / "lgb_1h.json").read_text())["metrics"]["n_folds"] == 357
