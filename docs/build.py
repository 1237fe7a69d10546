"""Build the notebooks as a static documentation site (`make docs`).

Every notebook of `nbs/` is executed on its small defaults (as `nbdev_test` runs it: from its own folder), then turned
into a page: nbdev directives and test-only cells are dropped, each `#| export` cell becomes the API entries of the
names it defines (signature and docstring, as nbdev's `show_doc` renders them), the `parameters` cell is hidden.
Jupyter Book 1 (Sphinx + myst-nb) renders the pages with warnings as errors; nothing on a page is fetched from
the internet (MathJax is served from the site itself).

    python docs/build.py                      # the site in _docs/_build/html
    python docs/build.py --execute-only       # only execute the notebooks into the cache (`make test-nbs`: the check
                                              # that every notebook runs on its defaults; the site then reuses them)
    python docs/build.py --raw --out /tmp/x   # the raw notebooks, unexecuted and untransformed (to test the checks)
"""
import argparse
import ast
import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
DOCS = ROOT / "docs"
PARTS = ("core", "models", "export", "serve", "pipeline")   # the subpackages, each importing only those before it
PART_CAPTIONS = {"core": "Core: data, features, labels, validation", "models": "Models: the base models, stacking, costs",
                 "export": "Export, registry and packaging", "serve": "Serving", "pipeline": "Pipeline: runner, report, CLI"}
DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$")
HIDDEN_TAGS = {"parameters", "injected-parameters"}   # papermill's cells: defaults for the reader of the code, not the page


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


def directives(source: str) -> tuple[dict[str, str], str]:
    "The nbdev directives of a cell (`{'export': '', 'default_exp': 'core.config'}`) and its source without them."
    found, kept = {}, []
    for line in source.splitlines():
        match = DIRECTIVE.match(line)
        if match:
            name, _, value = match.group(1).partition(" ")
            found[name.rstrip(":")] = value.strip()
        else: kept.append(line)
    return found, "\n".join(kept).strip("\n")


def title_and_summary(nb: dict) -> tuple[str, str]:
    "The H1 and the `> summary` line of a notebook's first Markdown cell."
    first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    lines = "".join(first["source"]).splitlines()
    title = next(l[2:].strip() for l in lines if l.startswith("# "))
    summary = next((l[1:].strip() for l in lines if l.startswith(">")), "")
    return title, summary


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


def execute(rel: str, nbs: Path, cache: Path, timeout: int = 900) -> tuple[str, float, bool]:
    "Execute notebook `rel` from its own folder unless `cache` holds a run of the same sources; (rel, seconds, cached)."
    import nbformat
    from nbclient import NotebookClient
    target, key_file, key = cache / rel, cache / (rel + ".key"), _source_key(rel, nbs)
    if target.exists() and key_file.exists() and key_file.read_text() == key: return rel, 0.0, True
    start = time.monotonic()
    nb = nbformat.read(nbs / rel, as_version=4)
    os.environ.pop("MPLBACKEND", None)   # CI's Agg would keep the kernels' figures off the page
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str((nbs / rel).parent)}})
    client.km = client.create_kernel_manager()
    sockets = Path(tempfile.mkdtemp(prefix="macd_nb_docs_kernel_"))
    client.km.transport, client.km.ip = "ipc", str(sockets / "kernel")   # Unix sockets: no TCP port, no warning
    try: client.execute()
    except Exception as error:
        raise RuntimeError(f"{rel}: executing the notebook on its defaults failed: {str(error)[-2000:]}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    key_file.write_text(key)
    return rel, time.monotonic() - start, False


def execute_all(order: list[str], nbs: Path, cache: Path, workers: int) -> None:
    "Execute every notebook of `order` (`workers` at a time), a line for each as it ends; exit 1 naming each that failed."
    failed, kernel_s, start = [], 0.0, time.monotonic()
    with ProcessPoolExecutor(max(1, workers)) as pool:
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


# ---------------------------------------------------------------------------------------------------- API entries
def _markdown_cell(text: str) -> dict:
    return {"cell_type": "markdown", "id": hashlib.sha1(text.encode()).hexdigest()[:8], "metadata": {}, "source": text}


def with_kernel(nb: dict) -> dict:
    "`nb` with the kernel metadata myst-nb highlights its code by (the stored notebooks may lack it)."
    return {**nb, "metadata": {**nb["metadata"], "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                               "language_info": {"name": "python"}}}


def api_entries(source: str, module_name: str, level: int) -> str:
    "Markdown for the public names an exported cell defines: signatures and docstrings, constants as their source."
    from nbdev.showdoc import MarkdownRenderer
    module = importlib.import_module(f"macd_nb.{module_name}")
    parts = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_") or not hasattr(module, node.name): continue
            symbol = getattr(module, node.name)
            parts.append(_entry(symbol, node.name, level))
            if inspect.isclass(symbol):
                for name, member in vars(symbol).items():
                    if name.startswith("_"): continue
                    member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if inspect.isfunction(member): parts.append(_entry(member, f"{node.name}.{name}", level + 1))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
            if not names: continue
            lines = source.splitlines()[node.lineno - 1:node.end_lineno]
            if len(lines) > 12: lines = lines[:11] + ["    ...   # (shortened; the notebook's code cell has it whole)"]
            parts.append("```python\n" + "\n".join(lines) + "\n```")
    del MarkdownRenderer
    return "\n\n".join(parts)


def _entry(symbol, name: str, level: int) -> str:
    "One API entry: a heading, the signature with its docments, the docstring."
    from nbdev.showdoc import MarkdownRenderer
    body = MarkdownRenderer(symbol, name=name)._repr_markdown_()
    body = re.sub(r"```python\n\n+", "```python\n", body)
    body = re.sub(r"\n\n+```", "\n```", body)
    return f"{'#' * min(level, 6)} `{name}`\n\n:::{{container}} api-entry\n{body.strip()}\n:::"


def to_page(nb: dict) -> dict:
    "An executed notebook as a documentation page (see the module's docstring)."
    module_name, level, cells = None, 1, []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            headings = [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", source, re.M)]
            if headings: level = headings[-1]
            cells.append(cell)
            continue
        if cell["cell_type"] != "code": continue
        if HIDDEN_TAGS & set(cell.get("metadata", {}).get("tags", [])): continue
        found, code = directives(source)
        if "default_exp" in found: module_name = found["default_exp"]
        if {"default_exp", "hide", "exporti"} & found.keys() or found.get("include") == "false": continue
        if "export" in found or "exports" in found:
            if module_name is None: raise ValueError("an `#| export` cell before the notebook's `#| default_exp`")
            api = api_entries(code, module_name, min(level + 1, 4))
            if "exports" in found: cells.append({**cell, "source": code})
            if api: cells.append(_markdown_cell(api))
            continue
        if not code.strip() and not cell.get("outputs"): continue
        tags = [t for t in cell.get("metadata", {}).get("tags", []) if t not in HIDDEN_TAGS]
        if found.get("echo") == "false": tags.append("remove-input")
        if found.get("output") == "false": tags.append("remove-output")
        cells.append({**cell, "source": code, "metadata": {**cell.get("metadata", {}), "tags": tags}})
    return with_kernel({**nb, "cells": cells})


# ---------------------------------------------------------------------------------------------------- the book
def write_book(order: list[str], pages: dict[str, dict], book: Path) -> None:
    "The Jupyter Book sources: one notebook per page, `_toc.yml` in registry order, `_config.yml`, MathJax."
    import jupyter_server_mathjax
    if book.exists(): shutil.rmtree(book)
    (book / "_static").mkdir(parents=True)
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", book / "_static" / "mathjax")
    shutil.copy(DOCS / "_config.yml", book / "_config.yml")
    contents = ["## Contents", ""]
    toc = ["format: jb-book", "root: index", "parts:"]
    for part in PARTS:
        chapters = [rel for rel in order if rel.startswith(part + "/")]
        if not chapters: continue
        contents += [f"**{PART_CAPTIONS[part]}**", ""]
        toc += [f"  - caption: {json.dumps(PART_CAPTIONS[part])}", "    chapters:"]
        for rel in chapters:
            title, summary = title_and_summary(pages[rel])
            contents.append(f"- [{title}]({rel}): {summary}")
            toc.append(f"      - file: {rel[:-len('.ipynb')]}")
        contents.append("")
    (book / "_toc.yml").write_text("\n".join(toc) + "\n")
    for rel in order:
        nb = pages[rel]
        if rel == "index.ipynb": nb = {**nb, "cells": nb["cells"] + [_markdown_cell("\n".join(contents))]}
        (book / rel).parent.mkdir(parents=True, exist_ok=True)
        (book / rel).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source|video|audio)\b[^>]*?\b(?:src|href)=[\"']((?:https?:)?//[^\"']+)", re.I)


def external_requests(html_dir: Path) -> list[str]:
    "Every script, stylesheet, image or frame a built page would fetch from another host."
    found = []
    for page in sorted(html_dir.rglob("*.html")):
        found += [f"{page.relative_to(html_dir)}: {url}" for url in EXTERNAL.findall(page.read_text(errors="replace"))]
    return found


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
    book = args.out / "book"
    write_book(order, pages, book)
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(book), "--path-output", str(args.out),
                            "--warningiserror", "--keep-going", "--all", "-q"], cwd=args.out)
    if build.returncode: raise SystemExit(f"the site build failed (warnings are errors): exit {build.returncode}")
    html = args.out / "_build" / "html"
    external = external_requests(html)
    if external: raise SystemExit("pages would fetch from the internet:\n" + "\n".join(external[:20]))
    print(f"site: {html / 'index.html'} ({len(order)} pages, {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
