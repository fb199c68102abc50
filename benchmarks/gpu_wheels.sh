#!/usr/bin/env bash
# Fetch, here (where pip reaches the registries), the wheels that
# gpu_round.sh needs on the device machine and its image lacks: skorch, and
# cvxpy with the solvers it loads (load_model refits the cone with CLARABEL).
# SCS (43 MB) is left out: the 64 MiB carry limit; CLARABEL comes first.
# They go to .whl/ (git-ignored through .git/info/exclude); carry ".whl".
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  skorch==1.4.0 cvxpy==1.9.3 clarabel==0.11.1 osqp==1.1.3 highspy==1.16.0 \
  qdldl==0.1.9.post1 sparsediffpy==0.6.1 cffi==2.1.1 pycparser==3.12
du -sh .whl
