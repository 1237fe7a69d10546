"""The chain of custody from the writer to the deployed model: every reader, `package` and `report` included, checks
each file against the sha256 its writer recorded, and a file the run's `MANIFEST.json` declares that is gone is
refused by name; so a tampered or missing model can never reach a package, a deployment or a healthy verdict.

One real smoke run (prepare, LightGBM, XGBoost, stacking, ONNX export, package) through the runner; each case damages
a copy of it and runs the real command line."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from macd_nb.core.rundir import CorruptArtifact, read_json
from macd_nb.pipeline.cli import main
from macd_nb.pipeline.examples import example_run

STAGES = ["prepare", "lgb", "xgb", "stacking", "export", "package"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A finished, deployable smoke run (both gradient-boosting models stacked, exported and packaged) and its roots."
    root = tmp_path_factory.mktemp("custody")
    os.environ["MACD_NB_CACHE"] = str(root / "cache")   # inherited by the stage kernels: no shared cache
    example_run(root / "runs" / "good", "smoke", STAGES, runner=True, reports=root / "reports" / "good",
                stacking_base_models=["lgb", "xgb"])
    return root


def _copy(root: Path, name: str) -> Path:
    "A copy of the good run (and its report folder, which `--resume` reads its stage plan from) named `name`."
    for kind in ("runs", "reports"):
        shutil.rmtree(root / kind / name, ignore_errors=True)
        shutil.copytree(root / kind / "good", root / kind / name, ignore=shutil.ignore_patterns(".lock"))
    return root / "runs" / name


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def flip(path: Path) -> None:
    "Flip one bit in the middle of the file, as a failing disk or a careless editor might."
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


# id, damage, file damaged (relative to the run), command, fragments the refusal must hold
CASES = [
    ("package-flipped-onnx", flip, "models/lgb_1h.onnx", "package", ["models/lgb_1h.onnx: corrupt", "--run-id broken --resume"]),
    ("package-flipped-meta", flip, "models/stacking_meta_1h.json", "package", ["models/stacking_meta_1h.json: corrupt"]),
    ("package-deleted-model", delete, "models/lgb_1h.txt", "package",
     ["models/lgb_1h.txt: listed in", "MANIFEST.json but missing", "--run-id broken --resume"]),
    ("package-deleted-ledger", delete, "models/.sha256.jsonl", "package", ["models/.sha256.jsonl is missing"]),
    ("report-deleted-model", delete, "models/lgb_1h.txt", "report",
     ["models/lgb_1h.txt: listed in", "MANIFEST.json but missing", "--run-id broken --resume"]),
    ("report-flipped-onnx", flip, "models/lgb_1h.onnx", "report", ["models/lgb_1h.onnx: corrupt", "--run-id broken --resume"]),
    ("report-deleted-ledger", delete, "models/.sha256.jsonl", "report", ["models/.sha256.jsonl is missing"]),
]


@pytest.mark.parametrize("case, damage, relative, command, fragments", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_is_refused_by_name(finished, capsys, case, damage, relative, command, fragments):
    root = finished
    run_dir = _copy(root, "broken")
    damage(run_dir / relative)
    before = _digest(run_dir)
    out = root / "out" / case
    roots = ["--runs-root", str(root / "runs"), "--reports-root", str(root / "reports")]
    argv = ["package", str(run_dir), "--out", str(out)] if command == "package" else ["report", "broken", *roots]
    (root / "reports" / "broken" / "TRAINING_REPORT.md").unlink()
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"macd-nb {command}: refused: ") and (command == "report" or len(said.strip().splitlines()) == 1), said
    for fragment in fragments: assert fragment in said, f"{fragment!r} not in: {said}"
    assert not out.exists() and not (root / "reports" / "broken" / "TRAINING_REPORT.md").exists()   # nothing written
    assert _digest(run_dir) == before   # and nothing of the run changed


def test_the_fix_it_names_works_and_the_good_run_goes_all_the_way(finished, tmp_path, capsys):
    "`--resume` rewrites a deleted model, the run packages again, deploys and is healthy; a byte flipped in the deployed copy is not."
    root = finished
    run_dir = _copy(root, "resumed")
    delete(run_dir / "models" / "lgb_1h.txt")
    roots = ["--runs-root", str(root / "runs"), "--reports-root", str(root / "reports")]
    assert main(["run", "--run-id", "resumed", "--resume", *roots]) == 0
    assert (run_dir / "models" / "lgb_1h.txt").exists()
    capsys.readouterr()
    assert main(["package", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    tarball = Path(json.loads(capsys.readouterr().out)["file"])
    registry = tmp_path / "registry"
    assert main(["deploy", str(tarball), "--to", str(registry)]) == 0
    assert main(["health", "--registry", str(registry)]) == 0
    deployed = registry / "runs" / "resumed"
    # the deployed copy has no ledgers: each file is checked against the package's manifest, and one it lacks is refused
    (deployed / "results" / "extra.json").write_text("{}")
    with pytest.raises(CorruptArtifact, match="extra.json: not listed in"): read_json(deployed / "results" / "extra.json")
    flip(deployed / "models" / "lgb_1h.onnx")
    capsys.readouterr()
    assert main(["health", "--registry", str(registry)]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["status"] == "unhealthy" and any("lgb_1h.onnx" in reason for reason in verdict["reasons"]), verdict


def test_the_report_shows_the_fingerprint_and_a_well_formed_data_table(finished):
    report = (finished / "reports" / "good" / "TRAINING_REPORT.md").read_text()
    fingerprint = read_json(finished / "runs" / "good" / "results" / "prepare.json")["data_fingerprint"]
    assert fingerprint.startswith("sha256:") and f"- data fingerprint `{fingerprint}`" in report
    after = report.split("## Data\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    rows = after[start:next(i for i in range(start, len(after)) if not after[i].startswith("|"))]
    table = [row.strip("|").split("|") for row in rows]
    header = [cell.strip() for cell in table[0]]
    assert "implausible bars" in header and set(table[1]) == {"---"}
    assert {len(row) for row in table} == {len(header)}, table   # header, separator and each symbol: one cell per column
