"""Settings checked for meaning, not only type (issue 18): every setting has a bad value that is refused before a run
starts, with the file, the key, the value and the fix; two settings have a normal form that is said; a kline file that
is not UTF-8 CSV text is refused by name with the fix."""
import codecs
import datetime
import gzip
import json

import pandas as pd
import pytest

from macd_nb.core.config import (BASE_MODELS, FEATURE_INPUTS, MIN_BOOTSTRAP_SAMPLES, RunConfig, flat_names,
                                 fold_problems, load_config, profile_config)
from macd_nb.core.klines import DataError, example_klines, read_klines
from macd_nb.core.validation import MIN_VAL_BARS, WalkForward, holdout_split

# one bad value per case; the text of an override file (on the smoke profile) and a fragment the refusal must hold
BAD = [
    ("profile: huge", "unknown profile 'huge'"),
    ("device: tpu", "device='tpu'"),
    ("seed: -1", "seed=-1 must be >= 0"),
    ("seed: 4294967296", "must be < 2**31"),
    ("n_jobs: 0", "n_jobs=0 must be >= 1"),
    ("threads_per_job: 0", "threads_per_job=0 must be >= 1"),
    ("executor: ray://x", "executor='ray://x' must be 'local' or 'dask://HOST:PORT'"),
    ("gates: {lgb_val_auc: 0.5}", "gates: unknown 'lgb_val_auc' (did you mean"),
    ("gates: {lgb_val_auc_mean: 55}", "each gate is an AUC in [0, 1]"),
    ("data_source: ''", "data_source='' names no data"),
    ("symbols: []", "symbols=[] names no market"),
    ("symbols: [BTCUSDT, BTC/USDT]", "['BTC/USDT'] is not a Binance symbol"),
    ("symbols: [BTCUSDT, ETHUSDT, BTCUSDT]", "lists ['BTCUSDT'] twice"),
    ("target: DOGEUSDT\nsymbols: [BTCUSDT]", "target='DOGEUSDT' is not in symbols=['BTCUSDT']"),
    ("timeframes: []", "timeframes=[] gives nothing to train"),
    ("timeframes: [2h]", "timeframes ['2h'] not in"),
    ("timeframes: [1h, 1h]", "lists ['1h'] twice"),
    ("start: '2024-13-45'", "start='2024-13-45' is not a date"),
    ("start: now", "start='now' is not a date"),
    ("end: '2024-02-30'", "end='2024-02-30' is not a date"),
    ("start: '2024-03-01'\nend: '2024-02-01'", "start='2024-03-01' is after end='2024-02-01'"),
    ("n_bars: 0", "n_bars=0 must be >= 1"),
    ("synthetic_edge: -1.0", "synthetic_edge=-1.0 must be >= 0"),
    ("synthetic_regime_change: soon", "synthetic_regime_change='soon' is not a date"),
    ("feature_inputs: [bogus]", "feature_inputs: unknown 'bogus'; choose from ['taker_buy_base', 'trades']"),
    ("feature_inputs: [trades, trades]", "lists ['trades'] twice"),
    ("bad_bars: drop", "bad_bars='drop'"),
    ("max_gap_hours: 0", "max_gap_hours=0 must be >= 1"),
    ("horizons: []", "horizons=[] must list at least one label horizon"),
    ("horizons: [0, 1]", "a label horizon is a number of bars >= 1"),
    ("horizons: [1, 1, 4]", "lists [1] twice"),
    ("label_horizon: 2", "label_horizon=2 is not one of horizons=[1, 4, 12, 24]"),
    ("test_fraction: 0.6", "test_fraction=0.6 must be in (0, 0.5)"),
    ("n_folds: 0", "n_folds=0 must be >= 1"),
    ("n_folds: 300", "validation folds would hold 4 bars, fewer than 12; use n_folds <= 122 or a longer range"),
    ("train_bars: 0", "train_bars=0 must be >= 1"),
    ("train_bars: 3000", "use a longer range or a shorter training window"),
    ("purge_bars: 12", "purge_bars=12 must be >= the longest label horizon 24"),
    ("embargo_bars: -1", "embargo_bars=-1 must be >= 0"),
    ("inner_valid_fraction: 0.5", "inner_valid_fraction=0.5 must be in (0, 0.5)"),
    ("bootstrap_samples: 0", "bootstrap_samples=0 must be >= 100"),
    ("bootstrap_samples: 99", "bootstrap_samples=99 must be >= 100"),
    ("bootstrap_block: 0", "bootstrap_block=0 must be >= 1"),
    ("serve_window: latest", "serve_window='latest' not in ('newest', 'validated')"),
    ("retrain_policy: sometimes", "retrain_policy='sometimes' not in ('gated', 'always')"),
    ("retrain_margin: 0.7", "retrain_margin=0.7 must be in [0, 0.5)"),
    ("retrain_min_bars: 0", "retrain_min_bars=0 must be >= 1"),
    ("gbm_rounds: 0", "gbm_rounds=0 must be >= 1"),
    ("gbm_learning_rate: -0.05", "gbm_learning_rate=-0.05 must be in (0, 1]"),
    ("gbm_learning_rate: 1.5", "gbm_learning_rate=1.5 must be in (0, 1]"),
    ("gbm_learning_rate: .nan", "gbm_learning_rate=nan must be in (0, 1]"),
    ("gbm_num_leaves: 1", "gbm_num_leaves=1 must be >= 2"),
    ("gbm_min_data_in_leaf: 0", "gbm_min_data_in_leaf=0 must be >= 1"),
    ("early_stopping_rounds: 0", "early_stopping_rounds=0 must be >= 1"),
    ("gbm_max_bin: 1", "gbm_max_bin=1 must be >= 2"),
    ("gbm_rebin_folds: 0", "gbm_rebin_folds=0 must be >= 1"),
    ("gbm_rounds_rule: median", "gbm_rounds_rule='median' not in ('tail', 'earlier_folds')"),
    ("gbm_rounds_window: 0", "gbm_rounds_window=0 must be >= 1"),
    ("gbm_seeds: 3", "gbm_seeds=3 would average identical boosters: set gbm_bagging_fraction or gbm_feature_fraction below 1"),
    ("gbm_seeds: 0", "gbm_seeds=0 must be >= 1"),
    ("gbm_bagging_fraction: 0.0", "gbm_bagging_fraction=0.0 must be in (0, 1]"),
    ("gbm_feature_fraction: 1.5", "gbm_feature_fraction=1.5 must be in (0, 1]"),
    ("gbm_lambda_l2: -1.0", "gbm_lambda_l2=-1.0 must be >= 0 (0: no penalty)"),
    ("nn_refits: 0", "nn_refits=0 must be >= 1"),
    ("nn_epochs: 0", "nn_epochs=0 must be >= 1"),
    ("tft_epochs: 0", "tft_epochs=0 must be >= 1"),
    ("nn_sequence_length: 0", "nn_sequence_length=0 must be >= 1"),
    ("nn_hidden: 0", "nn_hidden=0 must be >= 1"),
    ("nn_batch_size: 0", "nn_batch_size=0 must be >= 1"),
    ("nn_learning_rate: 0.0", "nn_learning_rate=0.0 must be in (0, 1]"),
    ("nn_max_features: 0", "nn_max_features=0 must be >= 1"),
    ("nn_patience: 0", "nn_patience=0 must be >= 1"),
    ("nn_control_epochs: 0", "nn_control_epochs=0 must be >= 1 (or null: as many as training)"),
    ("stacking_base_models: []", "stacking_base_models=[] stacks nothing"),
    ("stacking_base_models: [lgb, xgboost]", "stacking_base_models: unknown 'xgboost' (did you mean 'xgb'?)"),
    ("stacking_base_models: [lgb, lgb]", "lists ['lgb'] twice"),
    ("stacking_meta_blocks: 1", "stacking_meta_blocks=1 must be >= 2 (the first block is never scored)"),
    ("stacking_oof_auc: 1.2", "stacking_oof_auc=1.2 must be in [0, 1], or null to switch the gate off"),
    ("stacking_oof_auc_ci_above: -0.5", "stacking_oof_auc_ci_above=-0.5 must be in [0, 1], or null"),
    ("stacking_gain_ci_above: 1.5", "stacking_gain_ci_above=1.5 must be in [-1, 1], or null"),
    ("stacking_min_oof: {2h: 5}", "stacking_min_oof: unknown '2h'"),
    ("stacking_min_oof: {1h: -1}", "a number of OOF bars is >= 0"),
    ("stacking_min_oof_attempt: {4h: -5}", "a number of OOF bars is >= 0"),
    ("backtest_cost_bp: -1.0", "backtest_cost_bp=-1.0 must be in [0, 10000)"),
    ("backtest_cost_grid_bp: []", "backtest_cost_grid_bp=[] must list costs"),
    ("backtest_cost_grid_bp: [-1.0, 2.0]", "must list costs in [0, 10000)"),
    ("backtest_band_fractions: [0.0]", "must be shares of bars in (0, 1]"),
    ("backtest_blocks: 1", "backtest_blocks=1 must be >= 2"),
]
NOTHING_TO_CHECK = {"expanding"}   # a bool: either value means something


def _keys(text: str) -> set[str]:
    return {line.split(":")[0] for line in text.splitlines()}


def test_every_setting_has_a_bad_value_in_the_table():
    covered = set().union(*(_keys(text) for text, _ in BAD))
    assert covered | NOTHING_TO_CHECK == set(flat_names()), sorted(set(flat_names()) - covered - NOTHING_TO_CHECK)


@pytest.mark.parametrize("text, fragment", BAD, ids=[text.replace("\n", " ") for text, _ in BAD])
def test_a_bad_value_is_refused_naming_the_file_the_key_and_the_fix(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}") and fragment in message, message
    assert "\n" not in message   # one line on the terminal


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_the_three_profiles_pass_every_check(profile):
    config = load_config(None, profile)
    assert fold_problems(config) == [] and config.profile == profile


@pytest.mark.parametrize("text", ["gbm_learning_rate: 1", f"bootstrap_samples: {MIN_BOOTSTRAP_SAMPLES}", "n_folds: 122",
                                  "start: '2024-02-01'\nend: '2024-02-01'", "nn_control_epochs: null", "feature_inputs: []",
                                  "embargo_bars: 0", "stacking_min_oof: {}",
                                  "stacking_base_models: null", "stacking_oof_auc: null", "stacking_gain_ci_above: -0.01", "seed: 2147483647", "start: '2024-02-01 13:00'"])
def test_values_at_the_edge_are_accepted(tmp_path, text):
    (tmp_path / "edge.yaml").write_text(text + "\n")
    load_config(tmp_path / "edge.yaml")


def test_many_problems_are_one_refusal_each_under_the_place_it_came_from(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("horizons: []\nbootstrap_samples: 0\n")
    with pytest.raises(ValueError) as refused:
        load_config(path, symbols=["BTCUSDT", "", "ETHUSDT"])
    message = str(refused.value)
    assert message.count(str(path)) == 1 and "horizons=[]" in message and "bootstrap_samples=0" in message
    assert "arguments: symbols=['BTCUSDT', '', 'ETHUSDT']" in message and "--symbols BTCUSDT,ETHUSDT" in message


def test_symbols_are_read_in_upper_case_and_timeframes_finest_first_and_it_is_said(capsys):
    config = load_config(None, "smoke", symbols=["btcusdt", " ethusdt"], target="btcusdt", timeframes=["4h", "1h"])
    assert (config.data.symbols, config.data.target, config.data.timeframes) == (["BTCUSDT", "ETHUSDT"], "BTCUSDT", ["1h", "4h"])
    said = capsys.readouterr().err
    assert "note: arguments: symbols=['btcusdt', ' ethusdt'] read as ['BTCUSDT', 'ETHUSDT']" in said
    assert "timeframes=['4h', '1h'] read as ['1h', '4h'] (finest first" in said
    assert config.for_timeframe("4h").validation.train_bars == config.validation.train_bars // 4   # windows keep their span
    load_config(None, "smoke")
    assert capsys.readouterr().err == ""   # nothing to say about settings in their normal form


def test_a_yaml_key_written_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("n_folds: 3\nseed: 1\nn_folds: 4\n")
    with pytest.raises(ValueError, match=r"twice.yaml line 3 column 1: invalid YAML \('n_folds' is set twice, on lines 1 and 3"):
        load_config(path)


def test_a_json_key_written_twice_is_refused(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"n_folds": 3, "n_folds": 4}')
    with pytest.raises(ValueError, match=r"twice.json: 'n_folds' set twice in one object: keep one"):
        load_config(path)


def test_an_unquoted_yaml_date_is_the_text_written(tmp_path):
    path = tmp_path / "dates.yaml"
    path.write_text("start: 2024-01-01\nend: 2024-03-01 12:00\n")
    config = load_config(path)
    assert (config.data.start, config.data.end) == ("2024-01-01", "2024-03-01 12:00")
    path.write_text("start: 2024-13-45\n")   # once a ValueError from PyYAML's date constructor, naming nothing
    with pytest.raises(ValueError, match=f"{path}: start='2024-13-45' is not a date"):
        load_config(path)


def test_a_date_object_from_python_is_refused_with_the_text_to_write():
    with pytest.raises(ValueError, match=r"start=datetime.date\(2024, 1, 1\) is not a valid .*write the date as text: start: '2024-01-01'"):
        profile_config("smoke", start=datetime.date(2024, 1, 1))


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text("n_folds: 3\n", encoding="utf-16")
    with pytest.raises(ValueError, match=f"{path}: not UTF-8 text"):
        load_config(path)


def test_the_known_names_match_the_modules_that_use_them():
    from macd_nb.core.features import OPTIONAL_INPUTS
    from macd_nb.core.stages import STAGES
    assert set(FEATURE_INPUTS) == set(OPTIONAL_INPUTS)
    assert set(BASE_MODELS) == {stage.model for stage in STAGES if stage.model and stage.model != "stacking"}


@pytest.mark.parametrize("n_folds", [100, 122, 123, 200])
def test_the_up_front_fold_check_is_the_fold_builders_own(n_folds):
    "On the synthetic market the length is known: the config refuses exactly the fold counts the model stages would."
    config = profile_config("smoke", n_folds=n_folds)
    dev_idx, _ = holdout_split(config.data.n_bars, config.validation.test_fraction, gap=config.validation.purge_bars)
    try: fits = WalkForward.from_config(config).fold_val_size(len(dev_idx)) >= MIN_VAL_BARS
    except ValueError: fits = False
    assert (fold_problems(config) == []) == fits == (n_folds <= 122)


def test_the_fold_check_uses_the_date_range_of_kline_files(tmp_path):
    config = profile_config("smoke", data_source=str(tmp_path), start="2024-01-01", end="2024-03-01", n_folds=300)
    [(keys, text)] = fold_problems(config)
    assert keys[0] == "n_folds" and "1464 bars (at most: start='2024-01-01' to end='2024-03-01')" in text
    assert fold_problems(config.replace(end=None)) == []   # the length is known only after loading: the stage decides


# --- kline files that are not what their name says ------------------------------------------------------------------

def _csv_text(n_rows: int = 5) -> str:
    return example_klines(n_rows).to_csv(index=False)


@pytest.mark.parametrize("name, content, fragment", [
    ("a.csv", lambda: _csv_text().encode("utf-16"), "it holds UTF-16 text, not UTF-8; save it as UTF-8 (e.g. iconv -f UTF-16"),
    ("a.csv", lambda: _csv_text().encode("utf-16-le"), "NUL bytes (UTF-16 text or binary data)"),
    ("a.csv", lambda: gzip.compress(_csv_text().encode()), "its bytes are gzip-compressed, not CSV text; rename it a.csv.gz"),
    ("a.csv", lambda: b"PK\x03\x04" + b"\x00" * 40, "its bytes are a ZIP archive, not CSV text; rename it a.zip"),
    ("a.csv", lambda: b"PAR1" + b"\x01" * 40, "its bytes are parquet, not CSV text; rename it a.parquet"),
    ("a.csv", lambda: _csv_text().replace("volume", "volumé").encode("latin-1"), "(b'\\xe9') is not UTF-8; save the file as UTF-8"),
    ("a.csv.gz", lambda: gzip.compress(_csv_text().encode("utf-16")), "a.csv.gz: it holds UTF-16 text"),
])
def test_a_file_that_is_not_utf8_csv_text_is_refused_by_name_with_the_fix(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(DataError) as refused:
        read_klines(path)
    assert str(refused.value).startswith(str(path)) and fragment in str(refused.value), str(refused.value)


def test_excels_utf8_mark_is_dropped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + _csv_text().encode())
    rows = read_klines(path)
    assert len(rows) == 5 and rows.columns[0] == "open_time" and rows["source_row"].iloc[0] == 2
