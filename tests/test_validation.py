"Property tests of the walk-forward splitter, and checks of the AUC, bootstrap and controls."
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from macd_nb.core.validation import (MIN_VAL_BARS, WalkForward, auc_ci, holdout_split, inner_split, leak_audit,
                                logistic_fit_predict, planted_leak_control, shuffled_label_control, toy_signal_data,
                                walk_forward_predict, _weighted_auc, block_bootstrap_counts)

splitter_settings = st.fixed_dictionaries({
    "n_folds": st.integers(1, 40),
    "train_size": st.integers(1, 300),
    "purge": st.integers(0, 30),
    "embargo": st.integers(0, 10),
    "expanding": st.booleans(),
    "n_rows": st.integers(50, 3000),
    "horizon": st.integers(1, 30),
})


def _folds_or_skip(s):
    splitter = WalkForward(s["n_folds"], train_size=s["train_size"], purge=s["purge"], embargo=s["embargo"],
                           expanding=s["expanding"])
    try:
        return splitter, splitter.folds(s["n_rows"])
    except ValueError as error:
        assert "needs at least" in str(error) or "training rows" in str(error)
        return splitter, None


@settings(max_examples=300, deadline=None)
@given(splitter_settings)
def test_no_training_label_reaches_into_validation(s):
    "With purge >= horizon, every training label ends before its validation window starts."
    s = {**s, "purge": max(s["purge"], s["horizon"])}
    splitter, folds = _folds_or_skip(s)
    if folds is None: return
    for fold in folds:
        last_label_row = fold.train_idx + s["horizon"]          # the label of row i needs bar i + h
        assert last_label_row.max() < fold.val_idx[0]


@settings(max_examples=300, deadline=None)
@given(splitter_settings)
def test_purge_embargo_and_window_sizes_are_honoured(s):
    splitter, folds = _folds_or_skip(s)
    if folds is None: return
    val_size = splitter.fold_val_size(s["n_rows"])
    for fold in folds:
        assert fold.val_idx[0] - fold.train_idx[-1] - 1 == s["purge"] + s["embargo"]
        assert len(fold.val_idx) == val_size >= MIN_VAL_BARS
        assert np.all(np.diff(fold.train_idx) == 1) and np.all(np.diff(fold.val_idx) == 1)
        if s["expanding"]: assert fold.train_idx[0] == 0
        else: assert len(fold.train_idx) == min(s["train_size"], fold.train_idx[-1] + 1)


@settings(max_examples=300, deadline=None)
@given(splitter_settings)
def test_folds_cover_what_they_claim(s):
    "Validation windows are contiguous, disjoint, in time order, and end at the last row."
    splitter, folds = _folds_or_skip(s)
    if folds is None: return
    assert len(folds) == s["n_folds"]
    covered = np.concatenate([f.val_idx for f in folds])
    assert np.array_equal(covered, np.arange(covered[0], s["n_rows"]))
    assert all(f.train_idx[-1] < f.val_idx[0] for f in folds)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 24), st.integers(0, 5), st.lists(st.integers(0, 3), min_size=200, max_size=200))
def test_time_purge_handles_gaps(horizon, row_purge, gap_sizes):
    "Purging by label end time keeps training labels out of validation even when bars are missing."
    steps = np.array(gap_sizes) + 1                       # 1 = no gap before the bar
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.cumsum(steps), unit="h")
    label_end = times + pd.Timedelta(hours=horizon + 1)
    folds = WalkForward(4, train_size=60, purge=row_purge).folds(200, label_end=label_end, times=times)
    for fold in folds:
        assert (label_end[fold.train_idx] <= times[fold.val_idx[0]]).all()


def test_too_many_folds_names_the_numbers():
    with pytest.raises(ValueError, match=r"n_folds=357 needs at least 13068 bars .* got 9000: .* hold 0 bars.*; use n_folds <= 18"):
        WalkForward(357, train_size=8760, purge=24).folds(9000)


@pytest.mark.parametrize("n_folds, n_rows, val_size", [(122, 2568, 12), (123, 2568, None), (300, 2568, None), (6, 2568, 244)])
def test_validation_folds_are_never_shorter_than_min_val(n_folds, n_rows, val_size):
    "The smoke profile's 2568 development bars after a 1080-bar training window: 122 folds of 12 bars fit, 123 do not."
    splitter = WalkForward(n_folds, train_size=1080, purge=24)
    if val_size is not None:
        assert splitter.fold_val_size(n_rows) == val_size and all(len(f.val_idx) == val_size for f in splitter.folds(n_rows))
        return
    with pytest.raises(ValueError) as error:
        splitter.folds(n_rows)
    assert f"n_folds={n_folds}" in str(error.value) and f"got {n_rows}" in str(error.value)
    assert f"would hold {1464 // n_folds} bars, fewer than 12; use n_folds <= 122 or a longer range" in str(error.value)


def test_holdout_and_inner_split_keep_their_gaps():
    dev, test = holdout_split(1000, 0.1, gap=24)
    assert test[0] - dev[-1] - 1 == 24 and len(test) == 100
    fit, stop = inner_split(np.arange(100, 400), 0.1, purge=12)
    assert stop[0] - fit[-1] - 1 == 12 and stop[-1] == 399 and len(stop) == 30


def test_bootstrap_auc_matches_sklearn_on_resamples():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.5).astype(float)
    score = np.round(y * 0.3 + rng.normal(size=500), 1)
    order = np.argsort(score, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(score[order]) != 0])
    counts = block_bootstrap_counts(500, 10, 20, rng)
    ours = _weighted_auc(y[order], starts, counts[:, order])
    for row, value in zip(counts, ours):
        rows = np.repeat(np.arange(500), row.astype(int))
        assert value == pytest.approx(roc_auc_score(y[rows], score[rows]), abs=1e-12)


def test_block_ci_is_wider_for_autocorrelated_data_and_covers_the_truth():
    rng = np.random.default_rng(2)
    regimes = np.repeat(rng.normal(size=100), 40)
    shared_noise = np.repeat(rng.uniform(-1, 1, size=100), 40)     # labels move together within a regime
    y = (rng.random(4000) < np.clip(0.5 + 0.1 * np.tanh(regimes) + 0.3 * shared_noise, 0, 1)).astype(float)
    block_lo, block_hi = auc_ci(y, regimes, block=40, n_boot=400)
    iid_lo, iid_hi = auc_ci(y, regimes, block=1, n_boot=400)
    assert block_hi - block_lo > 1.3 * (iid_hi - iid_lo)
    assert block_lo < roc_auc_score(y, regimes) < block_hi


def test_walk_forward_finds_signal_and_controls_behave():
    X, y = toy_signal_data(4000, strength=0.2, seed=1)
    folds = WalkForward(8, train_size=800, purge=1).folds(4000)
    metrics = walk_forward_predict(logistic_fit_predict, X, y, folds).metrics(y, n_boot=200)
    assert metrics["oof_auc_ci95"][0] > 0.5
    shuffled = shuffled_label_control(logistic_fit_predict, X, y, folds, seed=0)
    assert abs(shuffled - 0.5) < 0.03
    leak = planted_leak_control(X[:2000], y[:2000], ["signal", "n1", "n2", "n3"])
    assert leak["planted_leak_flagged"] and leak["real_features_flagged"] == []


def test_leak_audit_can_fail():
    "An audit threshold above the leak's strength does not flag it: the check is not a constant."
    X, y = toy_signal_data(1000, seed=4)
    leak = planted_leak_control(X, y, ["signal", "n1", "n2", "n3"], noise=0.45, threshold=0.6)
    assert not leak["planted_leak_flagged"]
