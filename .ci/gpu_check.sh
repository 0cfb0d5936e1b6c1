#!/usr/bin/env bash
# The device check, for a session that is lent a GPU (the device tool's `run`; CI has no GPU):
# one command that builds the extension with its CUDA kernels against the machine's own torch,
# records `python -m jwae_ext.info` first (the build, the GPU, every operator against its
# reference on every device and dtype: $OUT/info.txt and info.json), runs every CUDA test
# (pytest -m cuda: each operator against the CPU kernels and the reference) and then the
# benchmarks on the GPU. Logs and the benchmark table go to $OUT.
#
#   run(command="bash .ci/gpu_check.sh", timeout_s=540)   # leaves time for a rerun in 15 minutes
#
# Exits non-zero when the build, a test or a benchmark fails; the tail of each log is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the logs}"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
py=${PYTHON:-python3}
status=0

{ nvidia-smi; "$py" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; } \
  >"$OUT/machine.txt" 2>&1
if ! timeout 300 "$py" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
timeout 120 "$py" -m jwae_ext.info >"$OUT/info.txt" 2>&1 || status=1
cat "$OUT/info.txt"
timeout 120 "$py" -m jwae_ext.info --json >"$OUT/info.json" 2>"$OUT/info_json.err" || status=1
timeout 240 "$py" -m pytest python_tests -m cuda -q -p no:cacheprovider --maxfail=25 \
  >"$OUT/cuda_tests.log" 2>&1 || status=1
tail -25 "$OUT/cuda_tests.log"
JWAE_BENCH_DEVICE=cuda JWAE_BENCH_JSON="$OUT/bench.json" timeout 200 "$py" -m pytest benchmarks -q \
  -p no:cacheprovider >"$OUT/bench.log" 2>&1 || status=1
tail -60 "$OUT/bench.log"
exit $status
