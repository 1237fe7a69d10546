"Configuration profiles and files; labels with ties, gaps and label end times."
import json

import numpy as np
import pandas as pd
import pytest

from macd_nb.core.config import RunConfig, load_config, profile_config, read_config, save_config
from macd_nb.core.labels import direction_labels, label_report


def test_profiles_resolve_and_full_is_the_reference_protocol():
    full = profile_config("full")
    assert (full.validation.n_folds, full.validation.train_bars, full.data.start, full.data.end, full.data.target) == (
        357, 8760, "2021-01-01", "2025-12-31", "BTCUSDT")
    assert profile_config("smoke").data.source == "synthetic"
    assert profile_config("quick").data.n_bars > profile_config("smoke").data.n_bars
    assert full.data.feature_inputs == [] and profile_config("smoke").data.feature_inputs == ["taker_buy_base", "trades"]
    # the boosting recipe adopted on real data (benchmarks/bench_recipe.py); the synthetic profiles keep one booster
    assert (full.gbm.rounds_rule, full.gbm.seeds, full.gbm.min_data_in_leaf) == ("earlier_folds", 5, 400)
    assert all((profile_config(p).gbm.rounds_rule, profile_config(p).gbm.seeds) == ("tail", 1) for p in ("smoke", "quick"))


@pytest.mark.parametrize("change, message", [
    ({"purge_bars": 3}, "purge_bars=3 must be >= the longest label horizon 24"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"timeframes": ["2h"]}, "timeframes ['2h']"),
    ({"label_horizon": 5}, "label_horizon=5"),
])
def test_invalid_settings_are_named(change, message):
    with pytest.raises(ValueError) as error:
        profile_config("smoke", **change)
    assert message in str(error.value)


def test_override_file_round_trip(tmp_path):
    (tmp_path / "o.json").write_text(json.dumps({"profile": "quick", "seed": 5, "symbols": ["BTCUSDT", "ETHUSDT"]}))
    config = load_config(tmp_path / "o.json", n_folds=9)
    assert (config.profile, config.seed, config.validation.n_folds, config.data.symbols) == ("quick", 5, 9, ["BTCUSDT", "ETHUSDT"])
    save_config(config, tmp_path / "run")
    assert read_config(tmp_path / "run") == config
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["n_folds"] == 9 and saved["config"]["data_source"] == "synthetic"   # one flat file format
    assert "numpy" in saved["versions"]


def test_unknown_key_in_override_file_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("n_fold: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown setting\(s\) 'n_fold' \(did you mean 'n_folds'\?\)"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "worse.yaml").write_text("xyzzy: 3\n")
    with pytest.raises(ValueError, match=r"worse.yaml: unknown setting\(s\) 'xyzzy'$"):
        load_config(tmp_path / "worse.yaml")


@pytest.mark.parametrize("text,message", [
    ("n_folds: six\n", "n_folds='six' is not a valid int"),
    ("expanding: \"no\"\n", "expanding='no' is not a valid bool"),
    ("timeframes: 1h\n", "timeframes='1h' is not a valid list"),
])
def test_a_value_of_the_wrong_type_names_the_file_the_key_and_the_type(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        load_config(path)


@pytest.mark.parametrize("name,text,where", [("run.yaml", "n_folds: 3\nseed: [1, 2\n", "line 3 column 1"),
                                             ("run.json", '{"n_folds": 3,\n "seed": }', "line 2 column 10")])
def test_invalid_yaml_or_json_names_the_line_and_column(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path} {where}: invalid"):
        load_config(path)


def test_config_groups_in_sections_and_keeps_the_flat_format():
    config = profile_config("quick", gbm_rounds=50, nn_hidden=8, stacking_oof_auc=0.6)
    assert (config.gbm.rounds, config.nn.hidden, config.stacking.min_oof_auc) == (50, 8, 0.6)
    assert config.to_flat()["gbm_rounds"] == 50 and config.replace(n_folds=7).validation.n_folds == 7
    assert config.for_timeframe("4h").validation.train_bars == config.validation.train_bars // 4


def _bars(closes, hours):
    index = pd.DatetimeIndex([pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=h) for h in hours], name="open_time")
    return pd.DataFrame({"close": np.asarray(closes, dtype=float)}, index=index)


def test_labels_look_up_the_future_by_time_not_by_row():
    bars = _bars([10, 11, 12, 9], [0, 1, 3, 4])          # hour 2 missing
    labels = direction_labels(bars, [1, 2])
    assert labels["y_1"].tolist()[:1] == [1.0]
    assert np.isnan(labels["y_1"].iloc[1])                # 01:00 -> 02:00 is missing
    assert labels["y_2"].iloc[1] == 1.0                   # 01:00 -> 03:00: 12 > 11
    assert labels["y_1"].iloc[2] == 0.0                   # 03:00 -> 04:00: 9 < 12


def test_ties_are_explicit_and_counted():
    bars = _bars([10, 10, 10, 11], [0, 1, 2, 3])
    dropped, down = direction_labels(bars, [1]), direction_labels(bars, [1], ties="down")
    assert np.isnan(dropped["y_1"].iloc[0]) and down["y_1"].iloc[0] == 0.0
    report = label_report(bars, dropped)
    assert report.loc[1, ["defined", "tie", "tail", "gap"]].tolist() == [1, 2, 1, 0]


def test_label_end_is_the_close_of_the_future_bar():
    bars = _bars([1, 2, 3, 4, 5], range(5))
    labels = direction_labels(bars, [1, 4], timeframe="1h")
    assert labels["label_end_4"].iloc[0] == pd.Timestamp("2024-03-01 05:00", tz="UTC")
    assert labels["label_end_1"].iloc[0] == pd.Timestamp("2024-03-01 02:00", tz="UTC")
