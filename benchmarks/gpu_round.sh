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
# Settings (environment): N_IMAGES (1500000), or TRAIN_SECONDS (with N_IMAGES
# unset: as many images as a probe of the training step says fit in that many
# seconds of training), EPOCHS (10), WIDTH (32),
# INPUT_NORM (laplacian: the image and its Laplacian; "" for the image alone),
# FAMILY_FRACTION (0.5; 0 is the paper's protocol: cone draws only),
# NOISE ("0 0.02"), LR (2e-3), N_POOL (16: thousands of gamma in the training
# pool, half of them family operators: 200 s for 16 000 on a 2-core CPU),
# HEAD_IMAGES (98304), N_TEST (512), THREADS (8: CPU threads of torch),
# MOMENT_STAGE ("": none; 3 supervises stage 3 with the local PSF moments,
# which sped up the start of CPU training but gained nothing by 384 000
# images: benchmarks/README.md, "Supervising the local PSF moments"),
# COMPILE (0: eager; 1 compiles the network with torch.compile, never tried
# on a GPU here, whose compilation would come out of the call's 10 minutes),
# MIXED_PRECISION ("": float32; bf16 trains the forward passes in bfloat16,
# 2.5x faster steps for width 32 on a CPU with AMX, not measured on a GPU yet:
# gpu_checks.sh measures it; the probe steps in the same precision),
# SYMMETRY ("": the shipped setting; dihedral trains in the setting closed
# under rotations and flips, whose network predicts with test-time averaging
# over the 8 transformed copies: -0.65 point paired on the CPU recipe, but
# no better than the default setting against the mean operator there,
# benchmarks/README.md "A basis closed under rotations and flips"; its
# setting takes a minute or two to fit before the training).
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
NORM=${INPUT_NORM-laplacian}
if [ -n "${TRAIN_SECONDS:-}" ] && [ -z "${N_IMAGES:-}" ]; then
  # size the run to the device: time training steps of this network on
  # batches made there, and take 70 % of what that rate gives in the budget
  # (skorch's loop, validation and the epoch ends cost the rest)
  N_IMAGES=$(WIDTH=${WIDTH:-32} NORM=$NORM PRECISION=${MIXED_PRECISION:-} \
    python3 - <<'PY' 2>> "$LOG"
import os, sys, time
import torch
from deepblur.datasets import natural_image_split
from deepblur.datasets.simulate import BlurDataset
from deepblur.nets.resnet import ResNet
from deepblur.pretrained._io import DEFAULT_DIR, load_model

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = load_model(DEFAULT_DIR)
data = iter(BlurDataset(natural_image_split()[0], model.basis, model.sampler,
                        batch_size=256, n_batches=10**9, pool_size=2000,
                        device=dev, random_state=0))
net = ResNet(model.basis.kernels_.shape[0], width=int(os.environ["WIDTH"]),
             input_norm=os.environ["NORM"] or None, stem_stride=4).to(dev)
opt = torch.optim.Adam(net.parameters(), 1e-3)
bf16 = os.environ["PRECISION"] == "bf16"
def step():
    X, y = next(data)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(X)
    torch.nn.functional.mse_loss(out.float(), y).backward()
    opt.step()
for n in (5, 20):                                  # warm-up, then timed
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
rate = 20 * 256 / (time.perf_counter() - t)
unit = 256 * int(os.environ.get("EPOCHS", "10"))
n = max(1, int(0.7 * rate * float(os.environ["TRAIN_SECONDS"]) // unit)) * unit
print(f"probe: {rate:.0f} images/s of training steps; N_IMAGES={n}", file=sys.stderr)
print(n)
PY
) || { echo "gpu_round.sh: the probe failed:" >&2; tail -n 20 "$LOG" >&2; exit 1; }
  export N_IMAGES
  tail -n 1 "$LOG"
fi
start=$(date +%s)
MOMENTS=${MOMENT_STAGE-}
COMPILE_FLAG=$([ "${COMPILE:-0}" = 1 ] || echo --no-compile)
# shellcheck disable=SC2086
python3 benchmarks/train_family_mix.py "$OUT/model" --init none \
  --width "${WIDTH:-32}" --n-images "${N_IMAGES:-1500000}" \
  ${NORM:+--input-norm "$NORM"} ${MOMENTS:+--moment-stage "$MOMENTS"} \
  ${MIXED_PRECISION:+--mixed-precision "$MIXED_PRECISION"} \
  ${SYMMETRY:+--symmetry "$SYMMETRY"} \
  --epochs "${EPOCHS:-10}" --lr "${LR:-2e-3}" --noise-std ${NOISE:-0 0.02} \
  --family-fraction "${FAMILY_FRACTION:-0.5}" \
  --n-pool "${N_POOL:-16}" --head-images "${HEAD_IMAGES:-98304}" \
  --threads "${THREADS:-8}" ${COMPILE_FLAG} 2>&1 | tee -a "$LOG"
echo "training and head: $(( $(date +%s) - start )) s" | tee -a "$LOG"
python3 benchmarks/bench_held_out_operators.py --model "$OUT/model" \
  --n "${N_TEST:-512}" --threads "${THREADS:-8}" 2>&1 | tee -a "$LOG"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$LOG"
