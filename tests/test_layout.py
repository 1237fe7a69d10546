"""The package layout holds: import boundaries, one stage registry that notebooks and README follow, no paths outside the repository."""
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


def test_models_never_import_pipeline():
    for path in (ROOT / "macd_nb" / "models").glob("*.py"):
        assert "pipeline" not in "".join(l for l in path.read_text().splitlines(True) if l.startswith(("from", "import"))), path


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
