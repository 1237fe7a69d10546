"""Stage 2, stacking: checked out-of-fold inputs, a meta-learner scored walk-forward, controls, skip rule, gates."""
import re
import shutil

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from macd_nb.core.config import profile_config
from macd_nb.core.prepare import load_table
from macd_nb.core.rundir import RunPaths, read_json, sha256_file
from macd_nb.core.validation import auc
from macd_nb.models.lstm import MultiHorizonLSTM
from macd_nb.models.sequences import load_sequence_model, predict_table
from macd_nb.models.stacking import InSampleError, load_base_oof, run_stacking, stacked_probability
from macd_nb.pipeline.examples import example_run

BUNDLED = ["lgb", "xgb", "lgb_cross", "lstm"]   # one base of each loader: LightGBM, XGBoost, torch
VALIDATED = dict(serve_window="validated", stacking_base_models=BUNDLED)


@pytest.fixture(scope="module")
def quick_stack(tmp_path_factory, quick_run_copy):
    """`make run`'s quick run, every stage through the runner (built once and cached: tests/test_gbm.py and
    tests/test_end_to_end_quick.py check the same run): its stacking stage over the six base models it trains."""
    run_dir = quick_run_copy(tmp_path_factory.mktemp("stack") / "quick")
    return profile_config("quick"), run_dir, read_json(run_dir / "results" / "stacking_1h.json")


@pytest.fixture(scope="module")
def validated_bundle(tmp_path_factory):
    """A smoke run whose bundle ships the validated refits (`serve_window: validated`), so that it can reproduce the
    one test score; a base model of each loader."""
    run_dir = example_run(tmp_path_factory.mktemp("bundle") / "validated", "smoke",
                          ["prepare", "lgb", "lstm", "cross_asset", "xgb", "stacking"], **VALIDATED)
    return profile_config("smoke", **VALIDATED), run_dir, read_json(run_dir / "results" / "stacking_1h.json")


def bases(record: dict) -> list[str]:
    "The base models a stacking record stacked, in its order."
    return list(record["metrics"]["base_oof_auc"])


def test_stacked_model_is_at_least_as_good_as_the_best_base(quick_stack):
    _, _, record = quick_stack
    metrics = record["metrics"]
    best = metrics["base_oof_auc"][metrics["best_base"]]          # on the same scored rows as the meta-learner
    assert metrics["oof_auc"] >= best - 0.005, (metrics["oof_auc"], metrics["best_base"], best)
    assert metrics["n_oof"] > 5000 and metrics["n_oof_scored"] < metrics["n_oof"]   # the first block is never scored
    lo, hi = record["reference_gains"]["best_base"]["ci95"]
    assert lo <= record["reference_gains"]["best_base"]["gain"] <= hi


def test_meta_learner_never_trains_on_the_block_it_scores(quick_stack):
    _, _, record = quick_stack
    assert len(record["blocks"]) == record["metrics"]["n_blocks"] - 1
    for block in record["blocks"]:
        assert block["last_train_row"] < block["first_scored_row"]
        assert pd.Timestamp(block["last_train_label_end"]) < pd.Timestamp(block["start"])


def test_controls_hold_for_the_meta_learner(quick_stack):
    _, _, record = quick_stack
    assert abs(record["controls"]["shuffled_label_auc"] - 0.5) <= 0.03, record["controls"]
    assert record["controls"]["planted_leak_flagged"]


def test_gates_and_a_plain_verdict(quick_stack):
    config, _, record = quick_stack
    names = [g["name"] for g in record["gates"]]
    assert names == ["oof_auc_ci95_low", "gain_over_best_feature_ci95_low", "n_oof"] and record["gates"][2]["threshold"] == 20_000
    assert record["gates"][1]["interval"] == record["reference_gains"]["best_feature"]["ci95"]   # the paired interval
    assert record["deployable"] == all(g["passed"] for g in record["gates"])
    assert record["not_deployable_because"] == [g["why"] for g in record["gates"] if not g["passed"]]   # says why, in words
    assert set(record["meta_learners"]) == {"mean_logit", "logistic", "nonnegative_logistic", "small_gbm", "small_mlp"}
    assert set(record["redundancy"]) == set(bases(record)) == {"lgb", "xgb", "lstm", "tft", "lgb_cross", "catboost"}


def test_meta_file_reproduces_the_test_predictions(quick_stack):
    config, run_dir, record = quick_stack
    paths = RunPaths(run_dir)
    meta = read_json(paths.model_file("stacking_meta", "1h", "json"))
    inputs = bases(record)
    assert meta["inputs"] == inputs and len(meta["coefficients"]) == len(inputs)
    test = pd.DataFrame({m: pd.read_parquet(paths.test_file(m, "1h"))["pred"] for m in inputs}).dropna()
    y = pd.read_parquet(paths.test_file("lgb", "1h"))["y"].reindex(test.index)
    assert auc(y, stacked_probability(meta, test[inputs].to_numpy())) == pytest.approx(record["metrics"]["test_auc"], abs=1e-12)


def _bundled_prediction(model: str, files: dict, table: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    "P(up) of `rows` of the prepared table from one base model's bundled `stacking_*` files, through its native loader."
    if model in ("lgb", "lgb_cross"):
        booster = lgb.Booster(model_file=str(files["txt"]))
        return booster.predict(table[booster.feature_name()].to_numpy()[rows])
    if model == "xgb":
        booster = xgb.Booster()
        booster.load_model(str(files["json"]))
        features = table[booster.feature_names].to_numpy(dtype=np.float32)[rows]
        return booster.predict(xgb.DMatrix(features, feature_names=booster.feature_names))
    network, meta = load_sequence_model(MultiHorizonLSTM, files["pt"], files["json"])
    return predict_table(network, meta, table, rows)[:, meta["main_head_index"]]


def test_the_bundle_alone_reproduces_the_stacked_test_score(validated_bundle):
    "Only stacking_meta_1h.json and the stacking_* files it lists (checked by sha256): the test AUC of the record."
    config, run_dir, record = validated_bundle
    paths = RunPaths(run_dir)
    meta = read_json(paths.model_file("stacking_meta", "1h", "json"))
    table, _ = load_table(run_dir, "1h")
    assert meta["inputs"] == BUNDLED
    bars = pd.DataFrame({m: pd.read_parquet(paths.test_file(m, "1h"))["pred"] for m in BUNDLED}).dropna().index
    rows = table.index.get_indexer(bars)
    columns = []
    for base in meta["base_models"]:
        files = {}
        for f in base["files"]:
            path = run_dir / f["path"]
            assert path.name.startswith("stacking_") and sha256_file(path) == f["sha256"], f
            files[path.suffix[1:]] = path
        assert pd.Timestamp(base["training_window"]["labels_end"]) <= bars[0]   # trained before the test period
        columns.append(_bundled_prediction(base["model"], files, table, rows))
    stacked = stacked_probability(meta, np.column_stack(columns))
    assert auc(table[f"y_{config.validation.label_horizon}"].to_numpy()[rows], stacked) == pytest.approx(
        record["metrics"]["test_auc"], abs=1e-9)
    assert not [p for p in (run_dir / "models").iterdir() if p.suffix in {".pkl", ".pickle", ".joblib"}]   # no pickle


def test_below_the_minimum_a_timeframe_is_skipped_with_its_reason(quick_stack, tmp_path):
    config, run_dir, _ = quick_stack
    run_dir = shutil.copytree(run_dir, tmp_path / "run")           # the module's run stays as it was
    record = run_stacking(config.replace(stacking_min_oof_attempt={"1h": 10 ** 9}), run_dir, "1h")
    assert record["skipped"].startswith("n_oof=") and "minimum to attempt stacking at 1h" in record["skipped"]
    assert not record["deployable"] and read_json(run_dir / "results" / "stacking_1h.json") == record


def test_an_in_sample_base_prediction_is_refused(quick_stack, tmp_path):
    _, run_dir, _ = quick_stack
    frame = pd.read_parquet(RunPaths(run_dir).oof_file("xgb", "1h"))
    bar = frame.index[500]
    frame.loc[bar, "train_label_end"] = bar + pd.Timedelta(hours=2)     # a model that had seen this bar's label
    (tmp_path / "oof").mkdir()
    frame.to_parquet(RunPaths(tmp_path).oof_file("xgb", "1h"))
    with pytest.raises(InSampleError, match=rf"1 predictions of 'xgb' .* first: bar {re.escape(str(bar))}"):
        load_base_oof(tmp_path, "1h", ["xgb"])


def test_every_base_oof_row_is_out_of_sample_by_its_own_provenance(quick_stack):
    _, run_dir, record = quick_stack
    for model in bases(record):
        frame = pd.read_parquet(RunPaths(run_dir).oof_file(model, "1h"))
        assert list(frame.columns) == ["y", "pred", "fold", "train_label_end"]
        assert (frame["train_label_end"] <= frame.index).all(), model
