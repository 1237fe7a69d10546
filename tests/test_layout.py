"""The package layout holds: import boundaries, one stage registry that notebooks and README follow, no paths outside the repository."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from macd_nb.core.stages import STAGES, default_nbs_dir, stage_table

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("papermill", "nbconvert", "IPython", "torch", "sklearn", "matplotlib")


def _modules(package: str) -> list[str]:
    "Every module of a subpackage, by file."
    folder = ROOT / "macd_nb" / package
    return [f"macd_nb.{package}"] + [f"macd_nb.{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


def test_core_and_serve_import_without_the_training_stack():
    "Serving must run on the core install: importing core and serve pulls in no notebook runner, no torch, no sklearn."
    modules = _modules("core") + _modules("serve") + _modules("export")
    code = (f"import sys\nfor name in {modules!r}: __import__(name)\n"
            f"print(sorted(m for m in {TRAINING_ONLY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported by macd_nb.core/serve/export: {done.stdout.strip()}"


def test_the_boundary_test_can_fail():
    "The same check on macd_nb.models does see torch: the test above is not vacuous."
    code = "import sys, macd_nb.models.lstm; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "True", done.stderr


LAYERS = ("core", "models", "export", "serve", "pipeline")   # each subpackage imports only itself and those before it


def _module_name(path: Path) -> str:
    "`macd_nb/serve/monitor.py` -> `macd_nb.serve.monitor`; a package's `__init__.py` -> the package."
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    "The absolute module a `from ... import` names, a relative one resolved against `package`."
    if not node.level: return node.module or ""
    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    "(line, absolute module name) of every import in `source`: function-level ones too, relative ones resolved."
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            # `from macd_nb import pipeline` and `from .. import serve` name subpackages: each imported name counts
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names] if base == "macd_nb" else [(node.lineno, base)]
    return found


def layer_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    "Every import in `source` (module `module`) of a layer above its own."
    own = module.split(".")
    if len(own) < 2 or own[1] not in LAYERS: return []
    return [f"{module}:{line} imports {target}" for line, target in sorted(imported_modules(source, module, is_package))
            if target.startswith("macd_nb.") and target.split(".")[1] in LAYERS
            and LAYERS.index(target.split(".")[1]) > LAYERS.index(own[1])]


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    "Every name starting with `_` that `source` (module `module`) imports from another module of the package."
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom): continue
        base = _absolute(node, package)
        if base.split(".")[0] == "macd_nb" and base != module:
            found += [f"{module}:{node.lineno} imports {base}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_private_name_crosses_a_module():
    "A name a module keeps to itself (`_name`) is not imported by another: what two modules share is public."
    found = []
    for path in sorted((ROOT / "macd_nb").rglob("*.py")):
        if path.name == "_modidx.py": continue
        found += private_imports(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert found == [], found


def test_the_private_name_check_can_fail():
    assert private_imports("from ..core.data import _date_bound, load_bars\n", "macd_nb.serve.binance") == \
        ["macd_nb.serve.binance:1 imports macd_nb.core.data._date_bound"]
    assert private_imports("from .data import __all__, load_bars\n", "macd_nb.core.rundir") == []


def test_every_import_points_down():
    "core <- models <- export <- serve <- pipeline, read from every import of every module (function-level and relative ones too)."
    violations = []
    for path in sorted((ROOT / "macd_nb").rglob("*.py")):
        violations += layer_violations(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert violations == [], "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(violations)


def test_the_import_check_can_fail():
    "Upward imports hidden in a function, written relative, or naming a subpackage are all seen."
    source = ("from ..core.rundir import read_json\n"
              "def f():\n    from ..serve.predictor import MLPredictor\n"
              "def g():\n    from .. import pipeline\n    import macd_nb.serve.monitor\n    from macd_nb import serve\n")
    assert layer_violations(source, "macd_nb.export.package") == [
        "macd_nb.export.package:3 imports macd_nb.serve.predictor", "macd_nb.export.package:5 imports macd_nb.pipeline",
        "macd_nb.export.package:6 imports macd_nb.serve.monitor", "macd_nb.export.package:7 imports macd_nb.serve"]
    assert layer_violations("from . import summary\nfrom .package import deploy\n", "macd_nb.export", is_package=True) == []
    assert layer_violations("from ..core.registry import promote\n", "macd_nb.pipeline.cli") == []


def served_tags_named(source: str) -> list[str]:
    "Every string constant in `source` that is the tag of a served base model (a model stage with a family): a switch on it."
    tags = {s.model for s in STAGES if s.family and s.kind}
    return sorted({n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in tags})


def test_every_served_family_is_declared_by_its_model_module():
    "A stage's family is a ServedFamily (a base model) or a CombinerFamily (the stacked meta-learner, the fusion MLP) in"
    " macd_nb.models (its notebook); export and serve never name a base model's tag."
    import importlib
    from macd_nb.core.served_model import CombinerFamily, ServedFamily
    families = {s.name: s.family for s in STAGES if s.family}
    assert set(families) >= {"lgb", "cross_asset", "xgb", "lstm", "tft", "catboost", "stacking", "fusion"}
    for stage, family in families.items():
        module, name = family.split(":")
        declared = getattr(importlib.import_module(module), name)
        assert module.startswith("macd_nb.models.") and isinstance(declared, CombinerFamily if stage in ("stacking", "fusion")
                                                                    else ServedFamily), (stage, declared)
    named = {f"{p.parent.name}/{p.name}": served_tags_named(p.read_text()) for layer in ("export", "serve")
             for p in sorted((ROOT / "macd_nb" / layer).glob("*.py"))}
    assert {module: tags for module, tags in named.items() if tags} == {}


def test_the_model_tag_check_can_fail():
    old_export = 'for model in ("lgb", "lgb_cross"):\n    pass\ndef f(model):\n    return model == "lstm"\n'
    assert served_tags_named(old_export) == ["lgb", "lgb_cross", "lstm"]
    assert served_tags_named('meta = "stacking_meta"\n') == []


def _title(notebook: Path) -> str:
    "The first line of a notebook's first cell."
    first = json.loads(notebook.read_text())["cells"][0]["source"]
    return "".join(first).splitlines()[0]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_notebook_title_carries_its_number(stage):
    assert _title(default_nbs_dir() / stage.notebook) == f"# Stage {stage.number}: {stage.title}"


def test_only_registered_notebooks_call_themselves_stages():
    registered = {stage.notebook for stage in STAGES}
    for notebook in sorted(default_nbs_dir().glob("*/*.ipynb")):
        relative = str(notebook.relative_to(default_nbs_dir()))
        if re.match(r"# Stage \d", _title(notebook)): assert relative in registered, relative


def test_readme_stage_table_is_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert stage_table() in readme, "README's stage table differs from macd_nb.core.stages.STAGES:\n" + stage_table()


def test_notebook_numbering_inside_each_folder():
    for folder in sorted(p for p in default_nbs_dir().iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        names = sorted(p.name for p in folder.glob("*.ipynb"))
        numbers = [name.split("_")[0] for name in names]
        assert all(re.fullmatch(r"\d\d", n) for n in numbers), (folder, names)
        assert len(set(numbers)) == len(numbers), (folder, names)


def demo_cells_that_leave_folders(nbs: Path) -> list[str]:
    "Notebook cells outside the library that make a temporary folder nothing removes (`scratch_dir` is removed)."
    found = []
    for path in sorted(nbs.rglob("*.ipynb")):
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and not source.lstrip().startswith("#| export") and "mkdtemp(" in source:
                found.append(f"{path.relative_to(nbs)} cell {k}")
    return found


def test_notebook_demonstrations_leave_no_folders_behind(tmp_path):
    assert demo_cells_that_leave_folders(default_nbs_dir()) == []
    cell = {"cell_type": "code", "source": ["run_dir = tempfile.mkdtemp()\n"], "metadata": {}, "outputs": []}
    (tmp_path / "demo.ipynb").write_text(json.dumps({"cells": [cell]}))
    assert demo_cells_that_leave_folders(tmp_path) == ["demo.ipynb cell 0"]   # the check can fail


MAX_LINE, MAX_EXPORTED_CELL = 110, 60   # characters per code line; lines per exported cell (nbdev-sized cells)


def notebook_size_problems(nbs: Path) -> list[str]:
    "Code lines over MAX_LINE characters and exported cells over MAX_EXPORTED_CELL lines, by notebook and cell."
    found = []
    for path in sorted(nbs.rglob("*.ipynb")):
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code": continue
            lines, where = "".join(cell["source"]).splitlines(), f"{path.relative_to(nbs)} cell {k}"
            found += [f"{where} line {n}: {len(line)} characters" for n, line in enumerate(lines, 1) if len(line) > MAX_LINE]
            if lines and lines[0].startswith("#| export") and len(lines) > MAX_EXPORTED_CELL:
                found.append(f"{where}: an exported cell of {len(lines)} lines")
    return found


def test_notebook_cells_and_lines_stay_small(tmp_path):
    "Every code line within 110 characters, every exported cell within 60 lines: a notebook reads as a chapter."
    assert notebook_size_problems(default_nbs_dir()) == []
    long_line = {"cell_type": "code", "source": ["x = 1   # " + "a" * 110 + "\n"], "metadata": {}, "outputs": []}
    long_cell = {"cell_type": "code", "source": ["#| export\n"] + ["x = 1\n"] * 60, "metadata": {}, "outputs": []}
    (tmp_path / "demo.ipynb").write_text(json.dumps({"cells": [long_line, long_cell]}))
    assert notebook_size_problems(tmp_path) == ["demo.ipynb cell 0 line 1: 120 characters",   # the check can fail
                                                "demo.ipynb cell 1: an exported cell of 61 lines"]


def test_nothing_refers_outside_the_repository():
    "Only the one test fixture (tests/conftest.py) locates the shared real data."
    offenders = []
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    for name in tracked:
        if name in ("tests/conftest.py", "tests/test_layout.py") or not name.endswith((".py", ".ipynb", ".md", ".sh", ".toml", ".ini", ".cfg", "Makefile")):
            continue
        text = (ROOT / name).read_text(errors="ignore")
        if "../shared" in text or "DESIGN.md" in text: offenders.append(name)
    assert offenders == []


def test_readme_is_a_front_page():
    "README fits on a screen or two, and every page it links to exists (the guide's pages among them)."
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in link]
    assert [link for link in links if not (ROOT / link).exists()] == []
    guide = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "guide").glob("*.md"))
    assert guide and set(guide) <= set(links), f"README links to {links}, not to every guide page {guide}"


def test_measured_tables_come_from_the_result_files():
    "The documentation's measured tables are what benchmarks/readme_tables.py makes of benchmarks/results/*.json."
    done = subprocess.run([sys.executable, "benchmarks/readme_tables.py", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_benchmark_results_record_no_machine_paths():
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        text = path.read_text()
        assert not re.search(r'"/(work|home|tmp|root|Users)/', text), path


def test_the_slowest_test_files_run_first():
    "conftest orders the tests by tests/durations.json: slowest file first, a file's tests in their own order, an unlisted file last."
    import conftest
    from types import SimpleNamespace
    seconds = json.loads(conftest.DURATIONS.read_text())
    assert seconds["tests/test_gbm.py"] > seconds["tests/test_layout.py"]
    assert all((ROOT / name).exists() for name in seconds), "durations.json names a test file that is gone"
    names = ["tests/test_unlisted.py::a", "tests/test_layout.py::b", "tests/test_gbm.py::c", "tests/test_layout.py::d"]
    items = [SimpleNamespace(nodeid=name) for name in names]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [names[2], names[1], names[3], names[0]]
    # pytest-xdist keeps that order only when told to (its own puts the files with the most tests first)
    assert "--dist loadfile --no-loadscope-reorder" in (ROOT / "Makefile").read_text()
