"""Jupyter server configuration of `make lab`: JupyterLab on 127.0.0.1, as root or not, saving notebooks clean.

A notebook saved from Lab is cleaned as `nbdev_clean` cleans it (the rules of settings.ini) and stored without
outputs or execution counts, as the repository keeps them: open, run, save, and `make check-sync` still passes.
This is nbdev's Jupyter save hook (`nbdev.clean.clean_jupyter`) without its `jupyter_hooks` switch, plus the outputs.
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_notebook_on_save(model, path, **kwargs):
    "`ContentsManager.pre_save_hook`: clean a notebook's model in place before it is written."
    if model.get("type") != "notebook" or model.get("content", {}).get("nbformat") != 4: return
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    settings = get_config(path=ROOT)
    notebook = model["content"]
    clean_nb(notebook, settings.clear_all, settings.get("allowed_metadata_keys").split(),
             settings.get("allowed_cell_metadata_keys").split(), settings.clean_ids)
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code": cell["outputs"], cell["execution_count"] = [], None


c = get_config()  # noqa: F821 (defined by Jupyter when it loads this file)
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.allow_root = os.getuid() == 0   # containers and CI run as root
c.ServerApp.root_dir = str(ROOT / "nbs")
c.FileContentsManager.pre_save_hook = clean_notebook_on_save
