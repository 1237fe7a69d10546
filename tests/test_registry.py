"""The model registry: aliases move only by compare-and-swap, a crash at any step leaves a loadable alias, runs that
are not deployable, do not verify or lack a file are refused by name, every move is in the audit log, and the CLI."""
import json
import shutil
from pathlib import Path

import pytest

from macd_nb.core.registry import (MOVE_STEPS, RegistryError, alias_target, aliases, audit_log, move_alias, promote,
                                   read_alias, register_run, rollback)
from macd_nb.pipeline.cli import main
from macd_nb.pipeline.examples import example_run


def _smoke_run(root: Path, name: str, **gates) -> Path:
    """A copy named `name` of the cached smoke run of both LightGBM models, stacked and exported, with its manifest (the
    run nbs/core/12_registry and the packaging notebooks use: one build for all of them)."""
    return example_run(root / name, "smoke", ["prepare", "lgb", "cross_asset", "stacking", "export"], run_id="lgb_pair",
                       stacking_base_models=["lgb", "lgb_cross"], **gates)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Two copies (two run ids) of a smoke run whose gates are open, and a run with the reference gates (not deployable)."
    root = tmp_path_factory.mktemp("runs")
    lowered = dict(stacking_oof_auc=0.0, stacking_min_oof={})
    return {"a": _smoke_run(root, "run_a", **lowered), "b": _smoke_run(root, "run_b", **lowered),
            "gated": _smoke_run(root, "run_gated", stacking_oof_auc=0.58, stacking_min_oof={"1h": 20_000})}   # the reference gates


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copies" / run.name
    shutil.copytree(run, target)
    return target


def test_promote_points_the_alias_and_audits_it(runs, tmp_path):
    registry = tmp_path / "registry"
    pointer = promote(registry, runs["a"], "1h", why="first")
    assert pointer["version"] == 1 and pointer["run"] == "run_a" and pointer["exposed_as"] == "stacking_meta.json"
    assert alias_target(registry, "1h").name == "stacking_meta_1h.json"
    promote(registry, runs["b"], "1h", why="retrained")
    (entry,) = [e for e in audit_log(registry) if e["to_version"] == 2]
    assert entry["from_run"] == "run_a" and entry["to_run"] == "run_b" and entry["why"] == "retrained"
    assert entry["who"] and entry["when"]


def test_a_stale_compare_and_swap_is_refused(runs, tmp_path):
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    register_run(registry, runs["b"])
    with pytest.raises(RegistryError, match="stale compare-and-swap, expected version None, found 1"):
        move_alias(registry, "1h", "run_b", expected_version=None, why="raced")
    assert read_alias(registry, "1h")["run"] == "run_a"


def test_a_run_that_is_not_deployable_is_refused_with_its_reasons(runs, tmp_path):
    with pytest.raises(RegistryError, match="not deployable at 1h: stacking_oof_auc"):
        promote(tmp_path / "registry", runs["gated"], "1h", why="try")
    assert read_alias(tmp_path / "registry", "1h") is None


def test_one_changed_byte_in_a_model_file_is_refused_by_name(runs, tmp_path):
    run = _copy(runs["a"], tmp_path)
    model = run / "models" / "stacking_lgb_1h.txt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="stacking_lgb_1h.txt: sha256 does not match"):
        promote(tmp_path / "registry", run, "1h", why="tampered")


def test_a_registered_file_changed_later_is_caught(runs, tmp_path):
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    registered = registry / "runs" / "run_a" / "models" / "stacking_meta_1h.json"
    registered.write_text(registered.read_text().replace('"deployable": true', '"deployable": true '))
    with pytest.raises(RegistryError, match="missing or changed"):
        alias_target(registry, "1h")
    with pytest.raises(RegistryError, match="stacking_meta_1h.json: sha256 does not match"):
        move_alias(registry, "1h", "run_a", expected_version=1, why="again")


@pytest.mark.parametrize("step", MOVE_STEPS)
def test_a_crash_at_any_step_leaves_a_loadable_alias(runs, tmp_path, step):
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    register_run(registry, runs["b"])
    before = read_alias(registry, "1h")
    def crash(name):
        if name == step: raise KeyboardInterrupt(step)
    with pytest.raises(KeyboardInterrupt):
        move_alias(registry, "1h", "run_b", expected_version=1, why="crash", hook=crash)
    after = read_alias(registry, "1h")
    moved = MOVE_STEPS.index(step) >= MOVE_STEPS.index("pointer_replaced")
    assert after == before if not moved else (after["run"], after["version"]) == ("run_b", 2)
    assert alias_target(registry, "1h").exists()
    assert sorted(p.name for p in (registry / "aliases").iterdir()) == ["1h.json"]   # no temporary file left
    assert [e["to_version"] for e in audit_log(registry)][-1] == (2 if MOVE_STEPS.index(step) >= MOVE_STEPS.index("audited") else 1)


def test_a_killed_moves_temporary_file_is_not_an_alias(runs, tmp_path):
    "SIGKILL inside a move leaves its temporary pointer file behind (.1h.<hex>.tmp.json); only real pointers are aliases."
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    (registry / "aliases" / ".1h.0123456789ab.tmp.json").write_text('{"alias": "1h", "ver')
    assert list(aliases(registry)) == ["1h"]


def test_rollback_returns_to_the_previous_run(runs, tmp_path):
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    promote(registry, runs["b"], "1h", why="second")
    pointer = rollback(registry, "1h", why="second misbehaves")
    assert (pointer["run"], pointer["version"]) == ("run_a", 3)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(registry, "4h", why="never moved")


def test_a_different_run_under_a_registered_id_is_refused(runs, tmp_path):
    registry = tmp_path / "registry"
    register_run(registry, runs["a"])
    assert register_run(registry, runs["a"]) == registry / "runs" / "run_a"   # the same run again: a no-op
    impostor = tmp_path / "other" / "run_a"
    shutil.copytree(runs["gated"], impostor)
    with pytest.raises(RegistryError, match="a different run is registered"):
        register_run(registry, impostor)


def test_the_cli_promotes_lists_rolls_back_and_refuses(runs, tmp_path, capsys):
    registry = str(tmp_path / "registry")
    assert main(["promote", str(runs["a"]), "--alias", "1h", "--registry", registry, "--why", "cli"]) == 0
    assert main(["promote", str(runs["b"]), "--alias", "1h", "--registry", registry, "--expect-version", "1"]) == 0
    assert main(["promote", str(runs["a"]), "--alias", "1h", "--registry", registry, "--expect-version", "1"]) == 2
    assert "stale compare-and-swap" in capsys.readouterr().err
    assert main(["rollback", "--alias", "1h", "--registry", registry]) == 0
    capsys.readouterr()
    assert main(["aliases", "--registry", registry]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["1h"]["run"] == "run_a" and listed["1h"]["version"] == 3 and aliases(registry) == listed


def test_a_pointer_that_disagrees_with_the_audit_log_is_refused_by_name(runs, tmp_path):
    "An alias pointer whose version was edited (2 -> 3) was healthy and rows were logged as version 3; now every reader refuses it."
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    promote(registry, runs["b"], "1h", why="second")
    path = registry / "aliases" / "1h.json"
    good = path.read_text()
    audit = (registry / "audit.jsonl").read_bytes()
    path.write_text(good.replace('"version": 2', '"version": 3'))
    for reader in (lambda: read_alias(registry, "1h"), lambda: alias_target(registry, "1h"), lambda: aliases(registry),
                   lambda: rollback(registry, "1h", why="x"), lambda: promote(registry, runs["a"], "1h", why="x")):
        with pytest.raises(RegistryError, match=r"aliases/1h.json: the alias pointer is damaged or was edited: it says run run_b "
                                                r"version 3.*newest move of 1h went to run run_b version 2"):
            reader()
    assert (registry / "audit.jsonl").read_bytes() == audit                  # nothing moved on refusal
    path.write_text(good)
    assert read_alias(registry, "1h")["version"] == 2


def test_a_flipped_byte_in_the_pointers_sha256_is_blamed_on_the_pointer(runs, tmp_path):
    registry = tmp_path / "registry"
    promote(registry, runs["a"], "1h", why="first")
    path = registry / "aliases" / "1h.json"
    pointer = json.loads(path.read_text())
    flipped = pointer["sha256"][:-1] + ("0" if pointer["sha256"][-1] != "0" else "1")
    path.write_text(json.dumps(pointer | {"sha256": flipped}, indent=2))
    with pytest.raises(RegistryError, match=r"aliases/1h.json: the alias pointer is damaged"):   # the audit line recorded the sha256
        alias_target(registry, "1h")
    lines = (registry / "audit.jsonl").read_text().splitlines()             # an audit line of a registry made before it did
    (registry / "audit.jsonl").write_text("\n".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "sha256"})
                                                    for l in lines) + "\n")
    with pytest.raises(RegistryError, match=r"aliases/1h.json: the alias pointer is damaged: its sha256 .* which matches its run's manifest"):
        alias_target(registry, "1h")
    meta = registry / pointer["target"]                                      # the model's file changed, the pointer sound
    path.write_text(json.dumps(pointer, indent=2))
    meta.write_bytes(meta.read_bytes() + b" ")
    with pytest.raises(RegistryError, match=r"stacking_meta_1h.json: what alias '1h' points at is missing or changed since it was moved"):
        alias_target(registry, "1h")


def test_a_run_deployed_from_its_package_is_the_same_run_when_promoted(runs, tmp_path):
    "deploy keeps config.json and the reports beside models/ and results/: promote of the same run folder is accepted."
    registry = tmp_path / "registry"
    register_run(registry, runs["a"])
    copy = registry / "runs" / "run_a"                                       # as deploy leaves it: more files than register_run keeps
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    full = json.loads((runs["a"] / "MANIFEST.json").read_text())["files"]
    for extra in [f for f in full if f not in manifest["files"]][:3]:
        (copy / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(runs["a"] / extra, copy / extra)
        manifest["files"][extra] = full[extra]
    (copy / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    assert promote(registry, runs["a"], "1h", why="after deploy")["run"] == "run_a"
    impostor = tmp_path / "other" / "run_a"                                   # a truly different run under that id: refused
    shutil.copytree(runs["gated"], impostor)
    with pytest.raises(RegistryError, match=r"a different run is registered under the id 'run_a': \S+ differs"):
        register_run(registry, impostor)


def test_listing_a_registry_that_is_not_there_is_refused(tmp_path):
    "A mistyped --registry must not list nothing as an empty registry does: it names the folder."
    with pytest.raises(RegistryError, match="no model registry there"):
        aliases(tmp_path / "no_such_registry")
    (tmp_path / "empty").mkdir()
    assert aliases(tmp_path / "empty") == {}
