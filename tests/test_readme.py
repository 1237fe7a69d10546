"""The documentation's walk-throughs, run exactly as written.

A bash block of README.md, of a page of docs/guide/ or of a notebook's Markdown cell that is preceded by the line
`<!-- tests/test_readme.py runs the next block as written -->` is run here line by line with bash, in a scratch folder that holds links to this checkout's `.venv` and `examples/`, with
the environment the README names (`MACD_NB_DATA`: the shared real klines; `MACD_NB_REGISTRY`: a fresh registry).
"""
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

from conftest import needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_readme.py runs the next block as written -->"


def marked_blocks(readme: str) -> list[list[str]]:
    "The command lines of every bash block that follows the marker (comments and blank lines dropped)."
    blocks = []
    for match in re.finditer(re.escape(MARKER) + r"\n```bash\n(.*?)```", readme, re.S):
        blocks.append([line for line in match.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def documents() -> dict[str, str]:
    "Every text that shows a reader commands: README.md, the guide's pages, each notebook's Markdown cells."
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts |= {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "docs" / "guide").glob("*.md"))}
    for notebook in sorted((ROOT / "nbs").rglob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        texts[str(notebook.relative_to(ROOT))] = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return texts


def documented_blocks() -> dict[str, list[list[str]]]:
    "The marked blocks of each document that has any."
    return {name: blocks for name, text in documents().items() if (blocks := marked_blocks(text))}


def test_the_marked_blocks_are_found():
    found = documented_blocks()
    assert "nbs/serve/00_overview.ipynb" in found, f"the serving walk-through lost its marker; marked blocks: {found}"
    assert all(all(blocks) for blocks in found.values())
    assert marked_blocks(MARKER + "\n```bash\n# a comment\necho hi  # said\n```\n") == [["echo hi  # said"]]


def test_every_marked_block_has_its_test():
    "A marked block promises a test that runs it: today the serving walk-through is the only one."
    blocks = [block for blocks in documented_blocks().values() for block in blocks]
    assert len(blocks) == 1 and any("shadow" in line for line in blocks[0]), blocks


@needs_shared_data
def test_serving_walkthrough_runs_as_written(tmp_path, shared_data):
    (block,) = [b for blocks in documented_blocks().values() for b in blocks if any("shadow" in line for line in b)]
    for name in (".venv", "examples"): (tmp_path / name).symlink_to(ROOT / name)
    env = os.environ | {"MACD_NB_DATA": str(shared_data), "MACD_NB_REGISTRY": str(tmp_path / "registry"),
                        "MACD_NB_CACHE": str(tmp_path / "cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    said = {}
    for line in block:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"walk-through line failed ({done.returncode}): {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        said[line.split()[1]] = done.stdout
    assert '"status": "healthy"' in said["health"]
    predicted = int(re.search(r"predicted (\d+)", said["shadow"]).group(1))
    assert predicted == 6 * 24 + 1 and "skipped 0" in said["shadow"], said["shadow"]   # 2025-12-01 00:00 .. 12-07 00:00
    with sqlite3.connect(tmp_path / "replay.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        bars = db.execute("SELECT COUNT(DISTINCT bar_time) FROM predictions").fetchone()[0]
    assert bars == predicted
    assert (tmp_path / "monitor" / "MONITOR.md").exists()
