#!/usr/bin/env bash
# The prepared GPU check (gpu_check.py's docstring says what it runs and reports), for the device machine:
#   bash experiments/benchmarks/gpu_check.sh [gpu_check.py options]
# There python3 holds PyTorch, transformers, JAX (CUDA), flax, optax and orbax; nothing is installed. The last
# line of stdout is the JSON; with $OUT set (the device tool) the whole output is kept in $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
log="${OUT:-/tmp}/gpu_check.log"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', \
transformers.__version__)"
  "$PYTHON" experiments/benchmarks/gpu_check.py "$@"
} 2>&1 | tee "$log"
