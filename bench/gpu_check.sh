#!/usr/bin/env bash
# The GPU check (bench/README.md, "GPU check"): on a machine with a CUDA GPU and its own
# PyTorch, and no network, measure what htdemucs_6s does there and write JSON for the
# capacity model.
#
#   make gpu-wheels                      # here, with network: bench/wheels/ (gitignored)
#   bash bench/gpu_check.sh              # there: installs bench/wheels/*.whl, then measures
#   bash bench/gpu_check.sh --device cpu --smoke   # the same plumbing on a CPU, in seconds
#
# Arguments go to `python -m bench gpu-check` (--help lists them). The wheels are
# installed with --no-deps into $GPU_CHECK_SITE (default /tmp/stem-fleet-site), which goes
# first on PYTHONPATH; torch and numpy are the machine's own. Without bench/wheels the
# running Python must already have the project's dependencies (as .venv does here).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/stem-fleet-site}
WHEELS=${GPU_CHECK_WHEELS:-bench/wheels}   # an empty folder: use the running Python as it is
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# The project itself from this checkout: consumer, bench, infra, and stem_contracts.
export PYTHONPATH="$PWD:$PWD/contracts${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m bench gpu-check "$@"
