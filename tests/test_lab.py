"""JupyterLab is the first tool of exploration: a Jupyter server on 127.0.0.1 runs a stage notebook through its kernel API,
and `make lab`, driven in headless Chromium, opens, runs and saves a notebook that stays clean."""
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("jupyter_server", reason="the `lab` extra is not installed")
from tornado.httpclient import HTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

NBS = Path(__file__).resolve().parents[1] / "nbs"
STAGE_NOTEBOOK = "core/10_prepare.ipynb"   # a real stage, seconds on its defaults


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyter(tmp_path):
    "A Jupyter server on 127.0.0.1 serving nbs/, with a token; (base URL, token)."
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                               f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False", "--allow-root",
                               f"--ServerApp.root_dir={NBS}"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              env=env)
    base, client = f"http://127.0.0.1:{port}", HTTPClient()
    try:
        for _ in range(120):
            try:
                client.fetch(f"{base}/api/status?token={token}")
                break
            except (ConnectionError, HTTPClientError, OSError):
                if server.poll() is not None: pytest.fail((tmp_path / "server.log").read_text())
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=20)
        client.close()


def _execute_request(code: str, session: str) -> dict:
    "A Jupyter messaging protocol `execute_request` on the shell channel."
    return {"header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": session, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}


async def _run_cells(base: str, token: str, kernel_id: str, cells: list[str]) -> list[dict]:
    "Execute `cells` in order on the kernel; each cell's reply status and any error it raised."
    socket_url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels?token={token}"
    connection, session, replies = await websocket_connect(socket_url), uuid.uuid4().hex, []
    for code in cells:
        request = _execute_request(code, session)
        connection.write_message(json.dumps(request))
        error = None
        while True:
            message = json.loads(await asyncio.wait_for(connection.read_message(), timeout=300))
            if message.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]: continue
            if message["msg_type"] == "error": error = f"{message['content']['ename']}: {message['content']['evalue']}"
            if message["msg_type"] == "execute_reply":
                replies.append({"status": message["content"]["status"], "error": error, "code": code[:80]})
                break
    connection.close()
    return replies


def test_a_stage_notebook_runs_through_the_jupyter_server_kernel_api(jupyter):
    base, token = jupyter
    client = HTTPClient()
    kernel = json.loads(client.fetch(HTTPRequest(f"{base}/api/kernels?token={token}", method="POST",
                                                 body=json.dumps({"name": "python3"}))).body)
    notebook = json.loads((NBS / STAGE_NOTEBOOK).read_text())
    cells = ["import os; os.chdir(%r)" % str((NBS / STAGE_NOTEBOOK).parent)]
    cells += ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    replies = asyncio.run(_run_cells(base, token, kernel["id"], cells))
    failed = [r for r in replies if r["status"] != "ok"]
    assert not failed, failed
    assert len(replies) == len(cells)
    # the kernel really ran the stage: the notebook's own run directory has the prepared table
    check = asyncio.run(_run_cells(base, token, kernel["id"], ["assert (Path(run_dir) / 'results' / 'prepare.json').exists()"]))
    assert check[0]["status"] == "ok", check
    # and an error in a cell comes back as an error, so the check above can fail
    broken = asyncio.run(_run_cells(base, token, kernel["id"], ["raise ValueError('on purpose')"]))
    assert broken[0]["status"] == "error" and "on purpose" in broken[0]["error"]
    client.fetch(HTTPRequest(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE"))


# ---------------------------------------------------------------------------------------------------- `make lab`
LAB_CONFIG = NBS.parent / "tools" / "jupyter_server_config.py"
SAVED_NOTEBOOK = "core/10_prepare.ipynb"


def _start_lab(tmp_path, root: Path, with_config: bool = True):
    "`make lab`'s command (JupyterLab with tools/jupyter_server_config.py) on a free port with a token, serving `root`."
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
                        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
                        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}   # no state from the user's own Lab
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", f"--ServerApp.port={port}",
               f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
               "--expose-app-in-browser"]   # window.jupyterapp, which the browser test reads
    command += [f"--config={LAB_CONFIG}"] if with_config else ["--ServerApp.ip=127.0.0.1", "--allow-root"]
    log = tmp_path / f"lab_{port}.log"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    base, client = f"http://127.0.0.1:{port}", HTTPClient()
    for _ in range(240):
        try:
            client.fetch(f"{base}/api/status?token={token}")
            return server, base, token
        except (ConnectionError, HTTPClientError, OSError):
            if server.poll() is not None: pytest.fail(log.read_text()[-3000:])
            time.sleep(0.5)
    server.terminate()
    pytest.fail("JupyterLab did not answer in 120 s: " + log.read_text()[-3000:])


def _save_as_lab_does(base: str, token: str, path: str) -> None:
    "GET the notebook, change it as opening, running and saving it in Lab does, PUT it back."
    client = HTTPClient()
    model = json.loads(client.fetch(f"{base}/api/contents/{path}?content=1&token={token}").body)
    notebook = model["content"]
    notebook["metadata"]["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    notebook["metadata"]["language_info"] = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                                             "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                                             "pygments_lexer": "ipython3", "version": sys.version.split()[0]}
    for number, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = number + 1
        cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00.000Z"}
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
    client.fetch(HTTPRequest(f"{base}/api/contents/{path}?token={token}", method="PUT",
                             body=json.dumps({"type": "notebook", "format": "json", "content": notebook})))
    client.close()


@pytest.mark.parametrize("with_config", [True, False], ids=["make-lab", "without-the-save-hook"])
def test_a_notebook_saved_from_lab_stays_clean(tmp_path, with_config):
    "Opened, run and saved through the server as Lab does, the notebook file is byte-identical (check-sync clean)."
    root = tmp_path / "nbs"   # a copy: the test never writes the checkout's notebooks
    (root / SAVED_NOTEBOOK).parent.mkdir(parents=True)
    original = (NBS / SAVED_NOTEBOOK).read_bytes()
    (root / SAVED_NOTEBOOK).write_bytes(original)
    server, base, token = _start_lab(tmp_path, root, with_config)
    try: _save_as_lab_does(base, token, SAVED_NOTEBOOK)
    finally:
        server.terminate()
        server.wait(timeout=20)
    saved = (root / SAVED_NOTEBOOK).read_bytes()
    if with_config: assert saved == original
    else: assert saved != original   # the check has teeth: a plain server writes Lab's metadata and the outputs


def test_every_notebook_names_the_projects_kernel():
    "Lab opens a notebook straight on the project's kernel (no Select Kernel dialog) when it names one."
    missing = [str(p.relative_to(NBS)) for p in sorted(NBS.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts
               and json.loads(p.read_text())["metadata"].get("kernelspec", {}).get("name") != "python3"]
    assert missing == []


# ---------------------------------------------------------------------------------------------------- in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    "Headless Chromium with one page, driven over the DevTools protocol (the websocket Chromium opens on 127.0.0.1)."
    def __init__(self, profile: Path):
        import websocket   # websocket-client, a dependency of jupyter_server
        port = _free_port()
        self.process = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                                         f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client, pages = HTTPClient(), None
        for _ in range(120):
            try:
                pages = json.loads(client.fetch(f"http://127.0.0.1:{port}/json/list").body)
                break
            except (ConnectionError, HTTPClientError, OSError): time.sleep(0.5)
        client.close()
        if pages is None: self.close(); pytest.fail("Chromium's DevTools endpoint did not answer in 60 s")
        page = next(p for p in pages if p["type"] == "page")
        self.socket, self.calls = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120), 0

    def call(self, method: str, **params) -> dict:
        "One DevTools command; its result (events that arrive meanwhile are skipped)."
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls: return message.get("result", message)

    def evaluate(self, expression: str):
        "The value of a JavaScript expression in the page (a promise is awaited); a thrown error fails the test."
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result: pytest.fail(f"{expression[:200]}\n{result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, until, what: str, timeout: float = 120) -> dict:
        "Evaluate `expression` (JSON text) every 0.5 s until `until(state)` holds; the state, or a failure naming `what`."
        deadline, state = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            state = json.loads(self.evaluate(expression) or "null")
            if state is not None and until(state): return state
            time.sleep(0.5)
        pytest.fail(f"{what} within {timeout:.0f} s; last seen: {state}")

    def close(self):
        if getattr(self, "socket", None): self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=20)


def _panel(path: str) -> str:
    "JavaScript: the notebook panel of `path` in Lab's main area (the shell's current widget needs window focus)."
    return f"[...jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === {json.dumps(path)})"


LAB_VIEW = """(() => {{
  if (!window.jupyterapp) return null;
  const panel = {panel}, session = panel && panel.sessionContext.session;
  return JSON.stringify({{
    opened: !!panel, h1: [...document.querySelectorAll('.jp-RenderedMarkdown h1')].map(h => h.textContent.replace('\u00b6', '')),
    kernel: session && session.kernel && session.kernel.name, kernel_display: panel && panel.sessionContext.kernelDisplayName,
    status: session && session.kernel && session.kernel.status,
    dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.textContent.slice(0, 200))}});
}})()"""

CELLS_RUN = """(() => {{
  const panel = {panel}, code = panel.content.widgets.filter(c => c.model.type === 'code');
  const outputs = code.map(c => [...Array(c.model.outputs.length).keys()].map(i => c.model.outputs.get(i).toJSON()));
  return JSON.stringify({{
    cells: code.length, not_run: code.filter(c => c.model.executionCount === null).length,
    status: panel.sessionContext.session.kernel.status, with_output: outputs.filter(o => o.length).length,
    errors: outputs.flat().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)}});
}})()"""


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install chromium")
@pytest.mark.parametrize("with_config", [True, False], ids=["make-lab", "without-the-save-hook"])
def test_a_notebook_opened_run_and_saved_in_lab_in_a_browser_stays_clean(tmp_path, with_config):
    """`make lab` in headless Chromium: the notebook opens on its title and the project's kernel with no dialog, every
    cell runs, and saving it from Lab leaves the file byte-identical. Without the save hook the same save rewrites it."""
    root = tmp_path / "nbs"
    (root / SAVED_NOTEBOOK).parent.mkdir(parents=True)
    original = (NBS / SAVED_NOTEBOOK).read_bytes()
    (root / SAVED_NOTEBOOK).write_bytes(original)
    metadata, first_cell = json.loads(original)["metadata"], json.loads(original)["cells"][0]
    title = "".join(first_cell["source"]).splitlines()[0].removeprefix("# ").strip()
    server, base, token = _start_lab(tmp_path, root, with_config)
    browser = Browser(tmp_path / "chromium")
    try:
        browser.call("Page.navigate", url=f"{base}/lab/tree/{SAVED_NOTEBOOK}?token={token}")
        panel = _panel(SAVED_NOTEBOOK)
        view = browser.wait_for(LAB_VIEW.format(panel=panel), lambda v: v.get("status") == "idle" and v["h1"] or v["dialogs"],
                                "the notebook did not open on an idle kernel")
        assert view["dialogs"] == []   # no Select Kernel dialog, nor any other
        assert title in view["h1"]
        # the kernel the notebook names, and it is the project's: the spec `make install` put in the environment
        assert view["kernel"] == metadata["kernelspec"]["name"] == "python3"
        specs = json.loads(HTTPClient().fetch(f"{base}/api/kernelspecs?token={token}").body)["kernelspecs"]
        assert view["kernel_display"] == specs["python3"]["spec"]["display_name"]
        assert Path(specs["python3"]["spec"]["argv"][0]).parent == Path(sys.executable).parent

        browser.evaluate(f"(() => {{ jupyterapp.shell.activateById({panel}.id); "
                         "return jupyterapp.commands.execute('notebook:run-all-cells').then(() => null); })()")
        run = browser.wait_for(CELLS_RUN.format(panel=panel), lambda r: r["errors"] or r["not_run"] == 0 and r["status"] == "idle",
                               "the notebook's cells did not all run", timeout=300)
        assert run["errors"] == []
        assert run["cells"] > 0 and run["with_output"] > 0   # it really ran: there is something a save could keep

        before = (root / SAVED_NOTEBOOK).stat().st_mtime_ns
        assert browser.evaluate(f"{panel}.context.save().then(() => {panel}.context.model.dirty)") is False
    finally:
        browser.close()
        server.terminate()
        server.wait(timeout=20)
    assert (root / SAVED_NOTEBOOK).stat().st_mtime_ns != before   # the server wrote the file
    saved = (root / SAVED_NOTEBOOK).read_bytes()
    if with_config: assert saved == original
    else: assert saved != original and any(c.get("outputs") for c in json.loads(saved)["cells"])   # Lab's save, unhooked
