"""Stage 4.2 and deploy: the package is byte-identical when built twice, and deploy refuses a tampered, truncated or
incomplete package, `..` and absolute paths, links, and leaves the target exactly as it was; a good one deploys and
the deployed alias is healthy."""
import gzip
import io
import tarfile
from pathlib import Path

import pytest

from macd_nb.core.registry import read_alias
from macd_nb.core.rundir import sha256_file, verify_artifact, write_manifest
from macd_nb.export.package import DeployError, build_package, deploy, run_package
from macd_nb.pipeline.cli import main
from macd_nb.pipeline.examples import example_run
from macd_nb.serve.predictor import MLPredictor


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    "A deployable smoke run (gates lowered) of both LightGBM models, stacked, exported and packaged."
    run_dir = example_run(tmp_path_factory.mktemp("pkg") / "run_p", "smoke", ["prepare", "lgb", "cross_asset", "stacking", "export"],
                          run_id="lgb_pair", stacking_base_models=["lgb", "lgb_cross"], stacking_oof_auc=0.0, stacking_min_oof={})
    record = run_package(run_dir)
    return run_dir, run_dir / record["file"], record


def _members(tarball: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tarball, "r:gz") as archive:
        return [(m, archive.extractfile(m).read()) for m in archive.getmembers()]


def _repack(members, target: Path) -> Path:
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as z, \
            tarfile.open(fileobj=z, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return target


def _listing(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")) if folder.exists() else []


def test_packaging_twice_gives_the_same_bytes(packaged, tmp_path):
    run_dir, tarball, record = packaged
    assert (run_dir / "results" / "package.json").exists()   # written after the first build: it must not change the second
    write_manifest(run_dir)                                    # nor the run's manifest, which the runner writes at the end
    again = build_package(run_dir, tmp_path)
    assert again.read_bytes() == tarball.read_bytes() and sha256_file(again) == record["sha256"]
    names = [m.name for m, _ in _members(tarball)]
    assert names == sorted(names) and f"{run_dir.name}/MANIFEST.json" in names and f"{run_dir.name}/report/TRAINING_REPORT.md" in names
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m, _ in _members(tarball))


def test_a_good_package_deploys_and_its_alias_is_healthy(packaged, tmp_path):
    _, tarball, _ = packaged
    registry = tmp_path / "registry"
    result = deploy(tarball, registry)
    assert read_alias(registry, "1h")["run"] == result["run"]
    report = MLPredictor("1h", registry).health_check()
    assert report["status"] == "healthy", report["reasons"]
    verify_artifact(registry / "runs" / result["run"], "models/drift_reference_1h.json")   # the monitor reads it from here
    assert deploy(tarball, registry)["aliases"]["1h"] == "already current"   # deploying again changes nothing


def _refused(tarball: Path, registry: Path, match: str):
    before = _listing(registry)
    with pytest.raises(DeployError, match=match):
        deploy(tarball, registry)
    assert _listing(registry) == before   # the target is left exactly as it was


def test_one_changed_byte_in_any_model_is_refused_by_name(packaged, tmp_path):
    _, tarball, _ = packaged
    members = _members(tarball)
    for k, (info, data) in enumerate(members):
        if "/models/" not in info.name: continue
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 1
        tampered = _repack(members[:k] + [(info, bytes(changed))] + members[k + 1:], tmp_path / f"t{k}.tar.gz")
        _refused(tampered, tmp_path / "registry", f"member '{info.name.split('/', 1)[1]}' does not match its sha256")


def test_a_truncated_package_is_refused(packaged, tmp_path):
    _, tarball, _ = packaged
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[: len(tarball.read_bytes()) // 2])
    _refused(truncated, tmp_path / "registry", "truncated or corrupt")


def test_an_incomplete_package_is_refused(packaged, tmp_path):
    _, tarball, _ = packaged
    members = [(i, d) for i, d in _members(tarball) if not i.name.endswith("stacking_meta_1h.json")]
    _refused(_repack(members, tmp_path / "incomplete.tar.gz"), tmp_path / "registry", "in the manifest but not in the package")


@pytest.mark.parametrize("name,kind", [("run_p/../../escape.txt", "file"), ("/etc/escape.txt", "file"),
                                       ("run_p/models/link", "symlink"), ("run_p/models/hard", "hardlink")])
def test_unsafe_members_are_refused(packaged, tmp_path, name, kind):
    _, tarball, _ = packaged
    info = tarfile.TarInfo(name)
    if kind == "symlink": info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink": info.type, info.linkname = tarfile.LNKTYPE, "run_p/config.json"
    else: info.size = 4
    members = _members(tarball)
    bad = _repack(members[:1] + [(info, b"evil" if kind == "file" else b"")] + members[1:], tmp_path / "bad.tar.gz")
    _refused(bad, tmp_path / "registry", "unsafe path" if kind == "file" else "link")
    assert not (tmp_path / "escape.txt").exists()


def test_the_cli_packages_and_deploys(packaged, tmp_path, capsys):
    run_dir, tarball, record = packaged
    assert main(["package", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    built = tmp_path / "out" / tarball.name
    assert sha256_file(built) == record["sha256"]
    assert main(["deploy", str(built), "--to", str(tmp_path / "registry")]) == 0
    assert main(["health", "--registry", str(tmp_path / "registry")]) == 0
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(built.read_bytes()[:100])
    assert main(["deploy", str(broken), "--to", str(tmp_path / "other")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
