"""Shared test settings: quiet OpenMP, non-interactive plots, and the one place that locates the shared real data.

Tests and benchmarks that use real Binance klines read them from `SHARED_DATA`: `$MACD_NB_SHARED_DATA` when set,
else the `shared/data/binance_spot_1h` folder next to this checkout. They skip cleanly when it is absent.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(os.environ.get("MACD_NB_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h")


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
