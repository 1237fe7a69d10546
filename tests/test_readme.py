"""README's walk-throughs, run exactly as written.

A block of README that is preceded by the line `<!-- tests/test_readme.py runs the next block as written -->` is run
here line by line with bash, in a scratch folder that holds links to this checkout's `.venv` and `examples/`, with
the environment the README names (`MACD_NB_DATA`: the shared real klines; `MACD_NB_REGISTRY`: a fresh registry).
"""
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


def test_the_marked_blocks_are_found():
    blocks = marked_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 1 and all(blocks), "README lost its tested walk-through"
    assert marked_blocks(MARKER + "\n```bash\n# a comment\necho hi  # said\n```\n") == [["echo hi  # said"]]


@needs_shared_data
def test_serving_walkthrough_runs_as_written(tmp_path, shared_data):
    (block,) = [b for b in marked_blocks((ROOT / "README.md").read_text()) if any("shadow" in line for line in b)]
    for name in (".venv", "examples"): (tmp_path / name).symlink_to(ROOT / name)
    env = os.environ | {"MACD_NB_DATA": str(shared_data), "MACD_NB_REGISTRY": str(tmp_path / "registry"),
                        "MACD_NB_CACHE": str(tmp_path / "cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    said = {}
    for line in block:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"README line failed ({done.returncode}): {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        said[line.split()[1]] = done.stdout
    assert '"status": "healthy"' in said["health"]
    predicted = int(re.search(r"predicted (\d+)", said["shadow"]).group(1))
    assert predicted == 6 * 24 + 1 and "skipped 0" in said["shadow"], said["shadow"]   # 2025-12-01 00:00 .. 12-07 00:00
    with sqlite3.connect(tmp_path / "replay.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        bars = db.execute("SELECT COUNT(DISTINCT bar_time) FROM predictions").fetchone()[0]
    assert bars == predicted
    assert (tmp_path / "monitor" / "MONITOR.md").exists()
