"""`make run`'s quick profile, every stage through the runner, ends in a package that deploys and is healthy.

In a file of its own: its run is the suite's longest build (about two minutes on two cores), and pytest-xdist's
`--dist loadfile` hands out whole files, so beside the smoke run of tests/test_end_to_end.py it would keep one
worker busy long after the other is done. tests/test_gbm.py checks the same cached run's boosted models: whichever
file runs first builds it (`tests/durations.json` puts the two on one worker, one after the other).
"""
import json

from macd_nb.export.package import deploy
from macd_nb.serve.predictor import MLPredictor

def test_quick_run_ends_in_a_package_that_deploys_and_is_healthy(tmp_path, quick_run_copy):
    "`make run`'s profile: every stage through the runner, its stacked model meets the deployment gates as they stand, its package deploys and its alias is healthy."
    run_dir = tmp_path / "runs" / "quick"
    quick_run_copy(run_dir, reports=tmp_path / "reports" / "quick")   # a copy of the cached run (conftest)
    stacking = json.loads((run_dir / "results" / "stacking_1h.json").read_text())
    gates = {g["name"]: g for g in stacking["gates"]}
    assert list(gates) == ["oof_auc_ci95_low", "gain_over_best_feature_ci95_low", "n_oof"]   # none switched off
    assert (gates["oof_auc_ci95_low"]["threshold"], gates["gain_over_best_feature_ci95_low"]["threshold"],
            gates["n_oof"]["threshold"]) == (0.5, 0.0, 20_000)                               # the full profile's values
    assert stacking["deployable"], stacking["not_deployable_because"]
    assert abs(stacking["controls"]["shuffled_label_auc"] - 0.5) <= 0.02 and stacking["controls"]["planted_leak_flagged"]
    package = json.loads((run_dir / "results" / "package.json").read_text())
    deployed = deploy(run_dir / package["file"], tmp_path / "registry")
    assert deployed["aliases"]["1h"]["run"] == "quick", deployed
    health = MLPredictor("1h", tmp_path / "registry").health_check()
    assert health["status"] == "healthy", health["reasons"]
    assert json.loads((run_dir / "results" / "validation.json").read_text())["passed"]
