#!/usr/bin/env bash
# One short device call for the CUDA code paths (benchmarks/README.md, "Support
# check in predict"): the tests that need CUDA (pytest -k cuda; skipped on
# CPU-only machines, so CI never runs them) and the support check timed on the
# GPU (bench_support_check.py --device cuda: the networks' inference and the
# bounds of cone_distance_bounds there, against one exact CPU projection per
# estimate, with the check that both flag the same images), and predict's rate
# against its batch size on the CPU and the GPU (bench_predict_batch.py), and
# the training step in bfloat16 against float32 there
# (bench_mixed_precision.py, without its training part).
# Output in $OUT (benchmarks/output/gpu_checks here).
#
# The device image has torch, pytest, hypothesis, scikit-learn and
# scikit-image but not skorch nor cvxpy: fetch their wheels here first
# (benchmarks/gpu_wheels.sh) and carry ".whl". Settings (environment): N (2048
# images per set), THREADS (8: CPU threads of torch), DEVICE (cuda; cpu runs
# the same script on a machine without a GPU, to try it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/output/gpu_checks}
mkdir -p "$OUT"
source benchmarks/device_env.sh
start=$(date +%s)
python3 -m pytest -q -p no:cacheprovider -k cuda tests 2>&1 \
  | tee "$OUT/tests.txt" || true
echo "tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"
python3 benchmarks/bench_support_check.py --device "${DEVICE:-cuda}" --n "${N:-2048}" \
  --threads "${THREADS:-8}" --n-calibration 0 2>&1 | tee "$OUT/support_check.txt"
echo "support check: $(( $(date +%s) - start )) s" | tee -a "$OUT/support_check.txt"
python3 benchmarks/bench_predict_batch.py --n 2048 --seconds 2 --threads "${THREADS:-8}" \
  --devices cpu "${DEVICE:-cuda}" 2>&1 | tee "$OUT/predict_batch.txt"
echo "predict batch: $(( $(date +%s) - start )) s" | tee -a "$OUT/predict_batch.txt"
python3 benchmarks/bench_mixed_precision.py --threads "${THREADS:-8}" --rounds 3 \
  --train-images 0 2>&1 | tee "$OUT/mixed_precision.txt"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/mixed_precision.txt"
