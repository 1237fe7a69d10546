"""Summarise a run's result JSONs into `benchmarks/results/<name>.json`, the file README's measured tables come from.

    python benchmarks/collect_run.py runs/<run_id> quick_cpu --where "2 CPU cores" [--reports reports/<run_id>]

With `--reports`, the run's stage wall times (from the runner's `status.json`) are kept too.
"""
import argparse
import json
import platform
import time
from pathlib import Path

MODEL_ORDER = ["baseline", "lgb", "lgb_cross", "xgb", "catboost", "lstm", "tft"]


def model_row(record: dict) -> dict:
    "The numbers of one model result that README shows."
    m, c, gains = record["metrics"], record["controls"], record.get("reference_gains", {})
    return {"model": record["model"], "stage": record["stage"], "timeframe": record["timeframe"],
            "n_features": record.get("n_features"), "oof_auc": m["oof_auc"], "oof_auc_ci95": m["oof_auc_ci95"],
            "n_oof": m["n_oof"], "n_folds": m["n_folds"], "test_auc": m["test_auc"], "test_auc_ci95": m["test_auc_ci95"],
            "n_test": m["n_test"], "shuffled_label_auc": c["shuffled_label_auc"],
            "planted_leak_flagged": c["planted_leak_flagged"], "best_feature": record.get("best_feature", {}).get("most_chosen"),
            "best_feature_oof_auc": m.get("best_feature_oof_auc"),
            "gain_vs_best_feature": gains.get("best_feature"), "gain_vs_baseline": gains.get("baseline"),
            "gates_failed": [g["name"] for g in record["gates"] if not g["passed"]],
            "seconds": record["timings_s"].get("total"), "device": record["device"]}


def stacking_row(record: dict) -> dict:
    "The numbers of one stacking result that README shows."
    m = record["metrics"]
    if record.get("skipped"): return {"timeframe": record["timeframe"], "n_oof": m["n_oof"], "skipped": record["skipped"]}
    return {"timeframe": record["timeframe"], "inputs": record["meta"]["inputs"], "meta_learner": record["chosen_meta_learner"],
            "oof_auc": m["oof_auc"], "oof_auc_ci95": m["oof_auc_ci95"], "n_oof": m["n_oof"], "n_scored": m["n_oof_scored"],
            "best_base": m["best_base"], "gain_vs_best_base": record["reference_gains"]["best_base"],
            "test_auc": m["test_auc"], "test_auc_ci95": m["test_auc_ci95"], "n_test": m["n_test"],
            "best_base_test_auc": m["best_base_test_auc"], "shuffled_label_auc": record["controls"]["shuffled_label_auc"],
            "deployable": record["deployable"], "not_deployable_because": record["not_deployable_because"],
            "redundancy": {k: v["verdict"] for k, v in record["redundancy"].items()},
            "seconds": record["timings_s"]["total"], "meta_seconds": record["timings_s"]["meta_walk_forward"]}


def backtest_rows(record: dict) -> list[dict]:
    "Per model of one after-costs evaluation: break-even costs, Sharpe after the default cost with its interval, returns."
    rows = []
    for model in record["models"]:
        band, long_short = record["oof"][f"{model}/band"], record["oof"][f"{model}/long_short"]
        test = record["test"].get(f"{model}/band")
        rows.append({"timeframe": record["timeframe"], "model": model, "cost_bp": record["cost_bp"],
                     "break_even_bp": {"band": band["break_even_bp"], "long_short": long_short["break_even_bp"],
                                       "long_flat": record["oof"][f"{model}/long_flat"]["break_even_bp"]},
                     "sharpe_band": band["sharpe"], "sharpe_band_ci95": band["sharpe_ci95"],
                     "sharpe_long_short": long_short["sharpe"], "sharpe_long_short_ci95": long_short["sharpe_ci95"],
                     "total_return_band": band["total_return"], "exposure_band": band["exposure"],
                     "test_sharpe_band": test["sharpe"] if test else None,
                     "test_sharpe_band_ci95": test["sharpe_ci95"] if test else None})
    hold = record["oof"]["buy_and_hold"]
    rows.append({"timeframe": record["timeframe"], "model": "buy_and_hold", "cost_bp": record["cost_bp"],
                 "total_return": hold["total_return"], "sharpe": hold["sharpe"],
                 "sharpe_ci95": record["oof"]["always_long"]["sharpe_ci95"], "n_bars": record["metrics"]["n_bars"],
                 "seconds": record["timings_s"]["total"]})
    return rows


def stage_times(report_dir: Path) -> dict:
    "Each stage's status and wall seconds (kernel start and the notebook's own cells included), and their sum."
    stages = json.loads((report_dir / "status.json").read_text())["stages"]
    return {"stages": [{"name": s["name"], "status": s["status"], "seconds": s.get("duration_s")} for s in stages],
            "total_s": round(sum(s.get("duration_s") or 0 for s in stages), 1)}


def collect(run_dir: Path, where: str, report_dir: Path | None = None) -> dict:
    "A summary of every model result in `run_dir`, in stage order (and the stage times of `report_dir`, when given)."
    results = run_dir / "results"
    prepare = json.loads((results / "prepare.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.name != "prepare.json"]
    records = sorted((r for r in records if "metrics" in r and r.get("model") in MODEL_ORDER),
                     key=lambda r: (r["timeframe"], MODEL_ORDER.index(r["model"])))
    source = prepare["data_source"]
    return {"where": where, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "platform": platform.platform(),
            "profile": config["config"]["profile"], "target": prepare["target"],
            "data": source if source == "synthetic" else Path(source).name,   # never a machine path
            "data_fingerprint": prepare["data_fingerprint"],
            "windows": {tf: {k: s[k] for k in ("first_bar", "last_bar", "rows")} for tf, s in prepare["timeframes"].items()},
            "oracle": prepare.get("oracle"), "versions": config["versions"], "models": [model_row(r) for r in records],
            "stacking": [stacking_row(json.loads(p.read_text())) for p in sorted(results.glob("stacking_*.json"))],
            "backtest": [row for p in sorted(results.glob("backtest_*.json")) for row in backtest_rows(json.loads(p.read_text()))]} \
        | ({"stage_times": stage_times(report_dir)} if report_dir is not None else {})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name", help="file name under benchmarks/results/ (without .json)")
    parser.add_argument("--where", required=True, help="the machine, in words")
    parser.add_argument("--reports", type=Path, help="the run's report folder (reports/<run_id>): stage wall times")
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.write_text(json.dumps(collect(args.run_dir, args.where, args.reports), indent=2) + "\n")
    print(out)
