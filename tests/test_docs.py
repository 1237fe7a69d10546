"""The documentation site (`make docs`, docs/build.py) checked in a real headless browser: every notebook in the
navigation, stage pages with their title, tables, plots and API entries and no nbdev directive, no broken internal
link, a working search, and nothing fetched from the internet. The checks fail on a site built from the raw notebooks."""
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("jupyter_book", reason="the `docs` extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("jupyter_server_mathjax", reason="the `docs` extra is not installed (pip install -e '.[docs]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None: pytest.skip("no headless browser: apt-get install chromium", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import build  # noqa: E402  (docs/build.py)

from macd_nb.core.stages import STAGES  # noqa: E402

SHOWCASE = "models/02_lgb"   # a stage page with a table, a plot and API entries


def dom(page: Path, query: str = "", wait_ms: int = 0) -> str:
    "The page's DOM after the browser ran its scripts (`wait_ms` of virtual time for scripts that load more)."
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri() + query]
    if wait_ms: command.insert(-1, f"--virtual-time-budget={wait_ms}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Parsed(HTMLParser):
    "The parts of a page the checks read: headings, links, images, ids, element classes, visible text."
    def __init__(self, html: str):
        super().__init__()
        self.h1, self.hrefs, self.imgs, self.ids, self.classes, self.text, self._in_h1 = [], [], [], set(), [], [], False
        self._skip = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs: self.ids.add(attrs["id"])
        self.classes += (attrs.get("class") or "").split()
        if tag == "a" and attrs.get("href") is not None: self.hrefs.append(attrs["href"])
        if tag == "img": self.imgs.append(attrs.get("src", ""))
        if tag == "h1": self._in_h1 = True; self.h1.append("")
        if tag in ("script", "style"): self._skip += 1

    def handle_endtag(self, tag):
        if tag == "h1": self._in_h1 = False
        if tag in ("script", "style"): self._skip = max(0, self._skip - 1)

    def handle_data(self, data):
        if self._in_h1: self.h1[-1] += data
        if not self._skip: self.text.append(data)


def nav_pages(index_html: str) -> list[str]:
    "The pages the sidebar lists, in order (relative paths without .html)."
    parsed = re.findall(r'<li class="toctree-l1[^"]*"><a class="reference internal" href="([^"#]+)\.html', index_html)
    return list(dict.fromkeys(parsed))


def page_problems(html_dir: Path, page: str, need_table=True, need_plot=True) -> list[str]:
    "What a stage page lacks: its H1, a table, a plot on disk, API entries; or what it shows that it should not (`#|`)."
    path = html_dir / f"{page}.html"
    parsed, problems = Parsed(dom(path)), []
    if not [h for h in parsed.h1 if h.strip()]: problems.append(f"{page}: no H1")
    text = "".join(parsed.text)
    if "#|" in text: problems.append(f"{page}: shows an nbdev directive (#|)")
    if need_table and "<table" not in path.read_text(): problems.append(f"{page}: no table")
    pngs = [src for src in parsed.imgs if src.endswith(".png") and (path.parent / unquote(src)).is_file()]
    if need_plot and not pngs: problems.append(f"{page}: no plot (an <img> of a PNG present on disk)")
    if "api-entry" not in parsed.classes or not re.search(r"\bdef |\bclass ", text):
        problems.append(f"{page}: no API entries")
    return problems


def broken_links(html_dir: Path) -> list[str]:
    "Every internal href of every page whose file, or whose #anchor in that file, does not exist."
    pages = {p: Parsed(p.read_text(errors="replace")) for p in html_dir.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for href in parsed.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"): continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir(): target = target / "index.html"
            if not target.exists(): broken.append(f"{page.relative_to(html_dir)}: {href}"); continue
            if parts.fragment and target.suffix == ".html" and parts.fragment not in pages[target].ids:
                broken.append(f"{page.relative_to(html_dir)}: {href} (no such anchor)")
    return broken


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    "The site built once per session into a temporary folder (executed notebooks reused from `make docs`'s cache)."
    out = tmp_path_factory.mktemp("docs")
    build.main(["--out", str(out)])
    return out / "_build" / "html"


def test_every_notebook_is_in_the_navigation_in_registry_order(site):
    "The guide's pages first, then every notebook in registry order; each title and summary on the front page."
    listed = nav_pages(dom(site / "index.html"))
    guide = build.guide_pages()
    expected = [name[:-len(".md")] for name in guide] + [rel[:-len(".ipynb")] for rel in build.notebook_order() if rel != "index.ipynb"]
    assert len(guide) >= 4 and listed == expected
    stage_pages = [listed.index(s.notebook[:-len(".ipynb")]) for s in STAGES]
    assert stage_pages == sorted(stage_pages)
    index_text = _letters("".join(Parsed(dom(site / "index.html")).text))
    pages = {rel: json.loads((build.NBS / rel).read_text()) for rel in build.notebook_order()}
    pages |= {name: (build.DOCS / name).read_text() for name in guide}
    for name, page in pages.items():
        title, summary = build.title_and_summary(page)
        assert _letters(title) in index_text and _letters(summary)[:40] in index_text, name


def test_the_guide_pages_show_their_tables_and_picture(site):
    "The measured tables (generated from benchmarks/results) and the retrain-policy plot made it onto the guide's page."
    path = site / "guide" / "04_measured.html"
    parsed = Parsed(dom(path))
    assert path.read_text().count("<table") >= 5 and "break-even" in "".join(parsed.text)
    assert [src for src in parsed.imgs if src.endswith("retrain_policy.png") and (path.parent / unquote(src)).is_file()]


def _letters(text: str) -> str:
    "Letters and digits only: Sphinx's curly quotes and Markdown's code marks do not count."
    return re.sub(r"[^0-9a-z]", "", text.lower())


def defines_api(rel: str) -> bool:
    "Whether a notebook's `#| export` cells define a public function or class."
    cells = json.loads((build.NBS / rel).read_text())["cells"]
    for cell in cells:
        found, code = build.directives("".join(cell["source"]))
        if cell["cell_type"] == "code" and "export" in found and re.search(r"^(def|class) [A-Za-z]", code, re.M): return True
    return False


def test_a_stage_page_shows_its_title_a_table_a_plot_and_api_entries(site):
    assert page_problems(site, SHOWCASE) == []


def test_every_stage_page_has_a_title_and_api_entries_and_no_directive(site):
    pages = [s.notebook for s in STAGES if defines_api(s.notebook)]   # cross_asset reuses lgb's code: no API of its own
    assert len(pages) >= len(STAGES) - 2
    problems = [p for rel in pages for p in page_problems(site, rel[:-len(".ipynb")], need_table=False, need_plot=False)]
    assert problems == []


def test_no_internal_link_is_broken(site):
    assert broken_links(site) == []


def test_search_index_and_search_page_work(site):
    index = (site / "searchindex.js").read_text()
    assert "walkforward" in index.lower() and "runconfig" in index.lower()
    results = re.findall(r'<ul class="search">(.*?)</ul>', dom(site / "search.html", "?q=walkforward", wait_ms=8000), re.S)
    assert results and "core/09_validation.html" in results[0]   # the browser ran the search: Walk-forward validation found


MATH_PAGE = "serve/06_monitor.html"   # its PSI and calibration formulas are inline TeX


def test_math_is_typeset_by_the_sites_own_mathjax(site):
    "TeX becomes MathJax output in the browser (fonts from the site itself), not raw \\( \\) text, and MathJax loads once."
    page = site / MATH_PAGE
    assert page.read_text().count("<script") < 60   # Jupyter Book once made each of MathJax's 400 files a script
    parsed = Parsed(dom(page, wait_ms=15000))
    assert "MathJax" in parsed.classes   # typeset: the TeX itself moved into <script type="math/tex">, never shown
    assert "\\(" not in "".join(parsed.text)


def test_no_page_fetches_anything_from_the_internet(site):
    assert build.external_requests(site) == []


def test_the_checks_fail_on_a_site_built_from_the_raw_notebooks(tmp_path):
    "The same checks on a page built from the stored notebook (unexecuted, untransformed) find what is missing."
    build.main(["--raw", "--out", str(tmp_path), "--only", SHOWCASE + ".ipynb"])
    problems = page_problems(tmp_path / "_build" / "html", SHOWCASE)
    assert any("#|" in p for p in problems), problems
    assert any("no plot" in p for p in problems) and any("no API entries" in p for p in problems), problems
