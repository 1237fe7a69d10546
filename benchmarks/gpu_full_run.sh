#!/usr/bin/env bash
# The GPU check, as one script for a lent GPU host (see README "GPU run"). From the repository root, with
# `.whl/` (py3.12 wheels: lightgbm, xgboost-cpu, papermill, nbconvert, ipykernel and their pure-Python needs)
# and `device_data/` (the real klines) carried. Writes everything under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -m ipykernel install --prefix /tmp/kern --name python3 > /dev/null 2>&1
export JUPYTER_PATH=/tmp/kern/share/jupyter:/tmp/site/share/jupyter   # the kernel, and nbconvert's templates
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import torch, lightgbm; print(torch.__version__, torch.cuda.is_available(), lightgbm.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

# The full profile on the real data, 1h (the reference protocol). STAGES picks the stages worth GPU time
# (LightGBM for its timing against the reference; LSTM and TFT in bf16; cross-asset LightGBM).
STAGE_LIMIT=${STAGE_LIMIT:-420}
STAGES=${STAGES:-prepare lgb lstm tft cross_asset}
timeout "$STAGE_LIMIT" python3 -c "import sys; from macd_nb.pipeline.cli import main; raise SystemExit(main(['run', '--profile', 'full', '--device', 'cuda', '--data', 'device_data', '--timeframes', '1h', '--run-id', 'gpu-full', '--keep-going', '--only', *sys.argv[1:]]))" $STAGES 2>&1 | grep -v "Kernel is running over TCP" | tee "$OUT/run.log"
python3 -c "from macd_nb.pipeline.cli import write_report; write_report('runs/gpu-full', 'reports/gpu-full', 'gpu-full')" || true
tar czf "$OUT/gpu_full_report.tgz" reports/gpu-full runs/gpu-full/results runs/gpu-full/config.json runs/gpu-full/figures 2>/dev/null
cp reports/gpu-full/EXECUTION_STATUS.md "$OUT/" 2>/dev/null; true
