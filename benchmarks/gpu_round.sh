#!/usr/bin/env bash
# One device call for the next GPU round (benchmarks/README.md, "What remains"):
# a new network trained from random weights on a mix of cone draws and
# operators of the calibration family, its blur-statistics branch fitted, then
# both test sets measured (bench_held_out_operators.py). Everything goes to
# $OUT (the device tool's output folder; benchmarks/output/gpu_round here).
#
# The device image has torch, scikit-learn and scikit-image but not skorch nor
# cvxpy: fetch their wheels here first (benchmarks/gpu_wheels.sh) and carry
# ".whl". deepblur itself runs from the working tree (PYTHONPATH).
#
# Settings (environment): N_IMAGES (1500000), EPOCHS (10), WIDTH (32),
# INPUT_NORM (laplacian: the image and its Laplacian; "" for the image alone),
# FAMILY_FRACTION (0.5; 0 is the paper's protocol: cone draws only),
# NOISE ("0 0.02"), LR (2e-3), N_POOL (16: thousands of gamma in the training
# pool, half of them family operators: 200 s for 16 000 on a 2-core CPU),
# HEAD_IMAGES (98304), N_TEST (512), THREADS (8: CPU threads of torch),
# MOMENT_STAGE ("": none; 3 supervises stage 3 with the local PSF moments,
# which sped up the start of CPU training but gained nothing by 384 000
# images: benchmarks/README.md, "Supervising the local PSF moments").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/output/gpu_round}
mkdir -p "$OUT"
source benchmarks/device_env.sh
LOG="$OUT/log.txt"
python3 - <<'PY' 2>&1 | tee "$LOG"
import torch, skorch, sklearn
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, skorch {skorch.__version__}, "
      f"scikit-learn {sklearn.__version__}, {gpu}")
PY
start=$(date +%s)
NORM=${INPUT_NORM-laplacian}
MOMENTS=${MOMENT_STAGE-}
# shellcheck disable=SC2086
python3 benchmarks/train_family_mix.py "$OUT/model" --init none \
  --width "${WIDTH:-32}" --n-images "${N_IMAGES:-1500000}" \
  ${NORM:+--input-norm "$NORM"} ${MOMENTS:+--moment-stage "$MOMENTS"} \
  --epochs "${EPOCHS:-10}" --lr "${LR:-2e-3}" --noise-std ${NOISE:-0 0.02} \
  --family-fraction "${FAMILY_FRACTION:-0.5}" \
  --n-pool "${N_POOL:-16}" --head-images "${HEAD_IMAGES:-98304}" \
  --threads "${THREADS:-8}" 2>&1 | tee -a "$LOG"
echo "training and head: $(( $(date +%s) - start )) s" | tee -a "$LOG"
python3 benchmarks/bench_held_out_operators.py --model "$OUT/model" \
  --n "${N_TEST:-512}" --threads "${THREADS:-8}" 2>&1 | tee -a "$LOG"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$LOG"
