"""Build the notebooks as a static documentation site (`make docs`).

Every notebook of `nbs/` is executed on its small defaults (as `nbdev_test` runs it: from its own folder), then turned
into a page by `macd_nb.pipeline.site` (nbs/pipeline/06_site.ipynb, which `macd-nb report RUN --html` shares): nbdev
directives and test-only cells are dropped, each `#| export` cell becomes the API entries of the names it defines
(signature and docstring, as nbdev's `show_doc` renders them), the `parameters` cell is hidden. The Markdown pages of
docs/guide/ come first. Jupyter Book 1 (Sphinx + myst-nb) renders the pages with warnings as errors; nothing on a
page is fetched from the internet (MathJax is served from the site itself).

    python docs/build.py                      # the site in _docs/_build/html
    python docs/build.py --execute-only       # only execute the notebooks into the cache (`make test-nbs`: the check
                                              # that every notebook runs on its defaults; the site then reuses them)
    python docs/build.py --raw --out /tmp/x   # the raw notebooks, unexecuted and untransformed (to test the checks)
"""
import argparse
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# directives, external_requests and title_and_summary: tests/test_docs.py reads them from here
from macd_nb.pipeline.site import (SiteError, build_html, contents, directives, external_requests, markdown_cell,  # noqa: F401
                                   title_and_summary, to_page, with_kernel, write_book)

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
DOCS = ROOT / "docs"
GUIDE = DOCS / "guide"   # Markdown pages: what README used to hold that belongs to no one notebook
PARTS = ("core", "models", "export", "serve", "pipeline")   # the subpackages, each importing only those before it
PART_CAPTIONS = {"core": "Core: data, features, labels, validation", "models": "Models: the base models, stacking, costs",
                 "export": "Export, registry and packaging", "serve": "Serving", "pipeline": "Pipeline: runner, report, CLI"}


def notebook_order(nbs: Path = NBS) -> list[str]:
    "Every notebook under `nbs`, relative: index first, then each subpackage in layer order, numbered files in order."
    from macd_nb.core.stages import STAGES
    found = sorted(str(p.relative_to(nbs)) for p in nbs.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    ordered = [n for n in found if "/" not in n]
    for part in PARTS: ordered += [n for n in found if n.startswith(part + "/")]
    others = sorted(set(found) - set(ordered))
    if others: raise SystemExit(f"notebooks outside the known parts {PARTS}: {others}; add their folder to PARTS")
    stage_pages = [ordered.index(s.notebook) for s in STAGES]
    if stage_pages != sorted(stage_pages):
        raise SystemExit("the folder order of the stage notebooks differs from macd_nb.core.stages.STAGES")
    return ordered


# ---------------------------------------------------------------------------------------------------- execution
@functools.cache
def _library_key() -> str:
    "The same for every notebook: the whole library's sources, Python and the versions of the libraries behind the numbers."
    import importlib.metadata as md
    from macd_nb.core.config import library_versions
    digest = hashlib.sha256()
    for path in sorted((ROOT / "macd_nb").rglob("*.py")): digest.update(path.read_bytes())
    versions = {**library_versions(), "sys": sys.version}
    for name in ("scipy", "matplotlib", "nbformat", "nbclient", "ipykernel", "onnx", "fastcore"):
        try: versions[name] = md.version(name)
        except md.PackageNotFoundError: pass
    digest.update(json.dumps(versions, sort_keys=True).encode())
    return digest.hexdigest()


def _source_key(rel: str, nbs: Path) -> str:
    "What an executed copy depends on: the notebook and `_library_key()`."
    return hashlib.sha256((nbs / rel).read_bytes() + _library_key().encode()).hexdigest()


@functools.cache
def _warm_kernels():
    "This worker's warm process: its notebooks' kernels are forked from it (see macd_nb.pipeline.kernels)."
    from macd_nb.pipeline.kernels import TORCH_IMPORTS, WarmKernels
    return WarmKernels(later=TORCH_IMPORTS)   # a third of the notebooks train, export or serve a network


def execute(rel: str, nbs: Path, cache: Path, timeout: int = 900) -> tuple[str, float, bool]:
    "Execute notebook `rel` from its own folder unless `cache` holds a run of the same sources; (rel, seconds, cached)."
    import nbformat
    from nbclient import NotebookClient
    target, key_file, key = cache / rel, cache / (rel + ".key"), _source_key(rel, nbs)
    if target.exists() and key_file.exists() and key_file.read_text() == key: return rel, 0.0, True
    start = time.monotonic()
    nb = nbformat.read(nbs / rel, as_version=4)
    os.environ.pop("MPLBACKEND", None)   # CI's Agg would keep the kernels' figures off the page
    # shutdown "immediate": once the last cell's output is in, a polite shutdown only waits for ipykernel's own exit
    # (3 s in about one notebook of four)
    from macd_nb.pipeline.kernels import warm_kernel_manager
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", shutdown_kernel="immediate",
                            resources={"metadata": {"path": str((nbs / rel).parent)}},
                            kernel_manager_class=warm_kernel_manager(_warm_kernels()))
    client.km = client.create_kernel_manager()
    with tempfile.TemporaryDirectory(prefix="macd_nb_docs_kernel_", ignore_cleanup_errors=True) as sockets:
        client.km.transport, client.km.ip = "ipc", str(Path(sockets) / "kernel")   # Unix sockets: no TCP port, no warning
        try: client.execute()
        except Exception as error:
            raise RuntimeError(f"{rel}: executing the notebook on its defaults failed: {str(error)[-2000:]}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    key_file.write_text(key)
    return rel, time.monotonic() - start, False


def execute_all(order: list[str], nbs: Path, cache: Path, workers: int) -> None:
    """Execute every notebook of `order` (`workers` at a time), a line for each as it ends; exit 1 naming each that failed.

    One build at a time executes into `cache`: `make test` runs the notebooks beside pytest, whose tests/test_docs.py
    builds the site from them; that build waits here, then finds them executed."""
    from macd_nb.core.rundir import file_lock
    failed, kernel_s, start = [], 0.0, time.monotonic()
    with file_lock(cache / ".lock"), ProcessPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(execute, rel, nbs, cache): rel for rel in order}
        for done, future in enumerate(as_completed(futures), 1):
            rel = futures[future]
            try: _, seconds, cached = future.result()
            except Exception as error:
                failed.append(str(error))
                print(f"[{done}/{len(order)}] {rel}: FAILED", flush=True)
                continue
            kernel_s += seconds
            print(f"[{done}/{len(order)}] {rel}: {'unchanged, from the cache' if cached else f'{seconds:.0f} s'}", flush=True)
    print(f"{len(order) - len(failed)} of {len(order)} notebooks ran on their defaults ({kernel_s:.0f} s kernel time, "
          f"{time.monotonic() - start:.0f} s wall, {workers} at a time)", flush=True)
    if failed: raise SystemExit("\n\n".join(failed))


# ---------------------------------------------------------------------------------------------------- the book
def guide_pages(guide: Path = GUIDE) -> list[str]:
    "The Markdown guide pages (docs/guide/*.md) in file-name order, relative to docs/ (as they sit in the book)."
    return [str(p.relative_to(guide.parent)) for p in sorted(guide.glob("*.md"))]


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.(?:png|svg|jpg))\)")


def guide_files(names: list[str]) -> dict[str, Path]:
    "The images the guide pages show, by their path from the book (the pages link them as in the repository)."
    files = {}
    for name in names:
        for link in IMAGE.findall((DOCS / name).read_text()):
            files[str(Path(name).parent / link)] = (DOCS / name).parent / link
    return files


def write_site_book(order: list[str], guides: list[str], pages: dict, book: Path) -> None:
    "The Jupyter Book sources: the guide, then one notebook per page in registry order, the contents on the front page."
    parts = [("Guide", guides)] if guides else []
    parts += [(PART_CAPTIONS[part], chapters) for part in PARTS if (chapters := [r for r in order if r.startswith(part + "/")])]
    index = pages["index.ipynb"]
    pages = {**pages, "index.ipynb": {**index, "cells": index["cells"] + [markdown_cell(contents(parts, pages))]}}
    write_book(book, "macd_nb", "index.ipynb", parts, pages, files=guide_files(guides))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_docs", help="build folder: book/ (sources) and _build/html")
    parser.add_argument("--cache", type=Path, default=ROOT / "_docs" / "executed", help="executed notebooks, reused while their sources are unchanged")
    parser.add_argument("--nbs", type=Path, default=NBS)
    parser.add_argument("--only", nargs="*", help="only these notebooks (relative to nbs/), e.g. core/10_prepare.ipynb")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("N_WORKERS", 2)))
    parser.add_argument("--raw", action="store_true", help="the notebooks as stored: not executed, not transformed")
    parser.add_argument("--execute-only", action="store_true", help="execute the notebooks into --cache, build no site")
    args = parser.parse_args(argv)
    start = time.monotonic()
    order = notebook_order(args.nbs)
    if args.only:
        unknown = sorted(set(args.only) - set(order))
        if unknown: raise SystemExit(f"--only: unknown notebook(s) {unknown}")
        order = [rel for rel in order if rel in args.only or rel == "index.ipynb"]
    if args.raw:
        pages = {rel: with_kernel(json.loads((args.nbs / rel).read_text())) for rel in order}
    else:
        execute_all(order, args.nbs, args.cache, args.workers)
        if args.execute_only: return
        pages = {rel: to_page(json.loads((args.cache / rel).read_text())) for rel in order}
    guides = [] if args.only else guide_pages()
    pages.update({name: (DOCS / name).read_text() for name in guides})
    write_site_book(order, guides, pages, args.out / "book")
    try: html = build_html(args.out / "book", args.out)
    except SiteError as failed: raise SystemExit(str(failed)) from None
    print(f"site: {html / 'index.html'} ({len(order) + len(guides)} pages, {time.monotonic() - start:.0f} s)")

if __name__ == "__main__":
    main()
