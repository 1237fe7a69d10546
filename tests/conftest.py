"""Shared test settings: quiet OpenMP, non-interactive plots, and the one place that locates the shared real data.

Tests and benchmarks that use real Binance klines read them from `SHARED_DATA`: `$MACD_NB_SHARED_DATA` when set,
else the `shared/data/binance_spot_1h` folder next to this checkout. They skip cleanly when it is absent.

The test files run slowest first, as last measured (`DURATIONS`; refresh it with
`pytest -n 2 --dist loadfile --record-durations`).
"""
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(os.environ.get("MACD_NB_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h")


DURATIONS = Path(__file__).with_name("durations.json")   # seconds per test file, summed, as last measured on 2 cores


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each test file's summed duration into tests/{DURATIONS.name} (the order files run in)")


def pytest_configure(config):
    if config.getoption("--record-durations") and not hasattr(config, "workerinput"):   # the controller, under xdist
        config.pluginmanager.register(_DurationRecorder(), "macd_nb_durations")


def _test_file(nodeid: str) -> str: return nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """The slowest test files first, by `DURATIONS` (a file not listed there runs last), each file's tests in their order.

    `make test-py` runs `--dist loadfile --no-loadscope-reorder`: pytest-xdist hands whole files to its workers in this
    order. Its own order (most tests first) started the three longest files last, and one worker ran alone for the last
    90 s of an 830 s run on 2 cores."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    position = {}
    for i, item in enumerate(items): position.setdefault(_test_file(item.nodeid), i)
    items.sort(key=lambda item: (-seconds.get(_test_file(item.nodeid), 0.0), position[_test_file(item.nodeid)]))


class _DurationRecorder:
    "Sums setup, call and teardown time per test file; writes `DURATIONS` at the end of the session."
    def __init__(self): self.seconds = {}

    def pytest_runtest_logreport(self, report):
        self.seconds[_test_file(report.nodeid)] = self.seconds.get(_test_file(report.nodeid), 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        DURATIONS.write_text(json.dumps({name: round(s, 1) for name, s in ranked}, indent=1) + "\n")


def needs_shared_data(test):
    "Mark `test` as reading the shared real data, and skip it cleanly when the data is absent."
    skip = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared real data not present at {SHARED_DATA}")
    return pytest.mark.shared_data(skip(test))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    "The folder of the shared real klines (the test is skipped when it is absent)."
    if not SHARED_DATA.exists(): pytest.skip(f"shared real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_market(shared_data):
    "The full profile's config and its 17 symbols' real 1h bars, loaded once for the tests that compare live and batch features."
    from macd_nb.core.config import profile_config
    from macd_nb.core.data import load_bars
    config = profile_config("full", data_source=str(shared_data))
    market = load_bars(config.data.source, symbols=config.data.symbols, start=config.data.start, end=config.data.end,
                       timeframe="1h", cache_dir=False).bars
    return config, market


# --- the deployable run the serving tests share --------------------------------------------------------------------------

DEPLOYABLE_STAGES = ["prepare", "lgb", "xgb", "lstm", "stacking", "export"]
# a smoke run is too short to pass the deployment gates honestly: they are lowered here, and only here. The shipped
# models are the refits that scored the test period (`serve_window: validated`), so their predictions are on file
DEPLOYABLE_SETTINGS = dict(stacking_base_models=["lgb", "xgb", "lstm"], stacking_oof_auc=0.0, stacking_min_oof={},
                           serve_window="validated")


@pytest.fixture(scope="session")
def deployable_run():
    """`copy(dest, **changes)`: a copy at `dest` of the one deployable smoke run the serving tests share: LightGBM,
    XGBoost and the LSTM on the smoke profile's inputs (taker volume and trade counts included), stacked and exported.
    It is built once for every test process (`macd_nb.pipeline.examples`, keyed by its settings and the library's
    sources); each test module copies it into a folder of its own and promotes it into a registry of its own.
    `changes` (flat settings) make a variant, built once too: `feature_inputs=[]` for the real klines, which lack the
    taker columns after 2024-07."""
    from macd_nb.pipeline.examples import example_run
    return lambda dest, **changes: example_run(dest, "smoke", DEPLOYABLE_STAGES, run_id="three_bases",
                                               **DEPLOYABLE_SETTINGS | changes)


# --- `make run`'s quick run, which three test modules check ---------------------------------------------------------------

@pytest.fixture(scope="session")
def quick_run_copy():
    """`copy(dest, reports=None)`: a copy at `dest` of `make run`'s quick run, every stage through the runner, built
    once for every test process and every module (one call, so one cache key: test_gbm, test_stacking and
    test_end_to_end_quick share a single build of about 100 s of CPU)."""
    from macd_nb.core.stages import stage_names
    from macd_nb.pipeline.examples import example_run
    return lambda dest, reports=None: example_run(dest, "quick", stage_names(), run_id="quick", runner=True,
                                                  reports=reports)


# --- helpers several test modules share -------------------------------------------------------------------------------

def tree_digest(*folders: Path) -> dict[str, str]:
    "Path -> sha256 of every file under `folders` (the lock file aside): what 'left unchanged' is checked against."
    import hashlib
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders if folder.exists()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def as_klines(bars):
    "Canonical bars back in Binance's kline layout (ms timestamps), as a dump would hold them."
    from macd_nb.core.klines import bars_as_klines
    return bars_as_klines(bars)


@pytest.fixture(scope="session")
def make_httpserver():
    "pytest-httpserver's server on 127.0.0.1, threaded: a handler that holds a request must not block the others."
    from pytest_httpserver import HTTPServer
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running(): server.stop()
