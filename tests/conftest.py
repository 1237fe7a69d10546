"Shared test settings: quiet OpenMP, non-interactive plots, the location of the shared real data."
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not present")
