"""`macd-nb report RUN --html`: a run's training report as a site (macd_nb.pipeline.site), checked in headless Chromium
as the documentation is (tests/test_docs.py): the summary and every executed stage notebook as pages, a plot inline, no
nbdev directive, no broken internal link, nothing fetched from the internet; and a clear refusal without the extra."""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

pytest.importorskip("jupyter_book", reason="the `docs` extra is not installed (make docs-install)")
pytest.importorskip("jupyter_server_mathjax", reason="the `docs` extra is not installed (make docs-install)")
from test_docs import Parsed, broken_links, dom, nav_pages  # noqa: E402  (skips this module too when there is no browser)

from macd_nb.core.rundir import read_json  # noqa: E402
from macd_nb.pipeline import site  # noqa: E402
from macd_nb.pipeline.cli import main  # noqa: E402
from macd_nb.pipeline.examples import example_run  # noqa: E402

RUN_ID = "html_report"
STAGES = ("prepare", "baseline")   # the baseline's notebook draws a plot


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    "A smoke run of two stages through the runner (executed notebooks, status, report), copied from the example cache."
    root = tmp_path_factory.mktemp("report_html")
    # under tests/conftest.py's MPLBACKEND=Agg, as in CI: the runner's kernels still put their figures inline
    example_run(root / "runs" / RUN_ID, "smoke", STAGES, runner=True, reports=root / "reports" / RUN_ID)
    return root / "runs", root / "reports"


@pytest.fixture(scope="module")
def html(roots) -> Path:
    "The report's site, built through the command line."
    runs, reports = roots
    assert main(["report", RUN_ID, "--runs-root", str(runs), "--reports-root", str(reports), "--html"]) == 0
    return reports / RUN_ID / "html"


def test_the_summary_and_every_executed_notebook_are_pages(html, roots):
    index = dom(html / "index.html")
    executed = [Path(s["notebook"]).stem for s in read_json(roots[1] / RUN_ID / "status.json")["stages"]]
    assert nav_pages(index) == [f"stages/{name}" for name in executed] and len(executed) == len(STAGES)
    text = "".join(Parsed(index).text)
    assert f"Training report: {RUN_ID}" in text and "OOF AUC" in text and "<table" in (html / "index.html").read_text()


def test_a_stage_page_shows_its_title_and_a_plot_and_no_directive(html):
    for page in sorted((html / "stages").glob("*.html")):
        parsed = Parsed(dom(page))
        assert [h for h in parsed.h1 if h.strip().startswith("Stage ")], page.name
        assert not [line for line in "".join(parsed.text).splitlines() if line.lstrip().startswith("#|")], page.name
    baseline = html / "stages" / "01_baseline.html"
    pngs = [src for src in Parsed(dom(baseline)).imgs if src.endswith(".png") and (baseline.parent / unquote(src)).is_file()]
    assert pngs, "no plot on the baseline's page"


def test_no_internal_link_is_broken_and_nothing_is_fetched(html):
    assert broken_links(html) == []
    assert site.external_requests(html) == []
    # MathJax is the site's own copy, on the pages that have math (Sphinx adds it only there)
    assert (html / "_static" / "mathjax" / "MathJax.js").is_file()
    loading = [re.findall(r'src="([^"]*MathJax\.js[^"]*)"', p.read_text()) for p in html.rglob("*.html")]
    assert all("_static/mathjax/MathJax.js" in src for srcs in loading for src in srcs)


def test_without_the_docs_extra_it_refuses_naming_the_install(roots, monkeypatch, capsys):
    runs, reports = roots
    monkeypatch.setattr(site, "missing_docs_extra", lambda: ["jupyter_book"])
    before = sorted(p for p in (reports / RUN_ID).rglob("*"))
    assert main(["report", RUN_ID, "--runs-root", str(runs), "--reports-root", str(reports), "--html"]) == 2
    said = capsys.readouterr().err
    assert "make docs-install" in said and "jupyter_book" in said and len(said.strip().splitlines()) == 1
    assert sorted(p for p in (reports / RUN_ID).rglob("*")) == before
