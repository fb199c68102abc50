# Sourced by the device-machine scripts (gpu_round.sh, gpu_checks.sh) from the
# repository root: installs the carried wheels (.whl, from gpu_wheels.sh:
# skorch and cvxpy, which the device image lacks) outside the image's
# site-packages, and puts them and the working tree on PYTHONPATH.
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/deepblur_site .whl/*.whl
  export PYTHONPATH="/tmp/deepblur_site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
