#!/usr/bin/env bash
# Compiles the CUDA kernels on a GPU-less machine against the CUDA 13.0 build of torch, loads the
# built module and fails if any operator lacks a CUDA kernel.
#
#   .ci/cuda_build_check.sh            # creates .ci-venv-cuda (torch 2.14.1, ~5.5 GB) if missing
#   JWAE_CUDA_VENV=/path/to/venv .ci/cuda_build_check.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${JWAE_CUDA_VENV:-$repo/.ci-venv-cuda}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 numpy ninja setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
fi
"$venv/bin/python" -c "import torch; assert torch.version.cuda, 'torch in $venv has no CUDA'"

site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"9.0"}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
export MAX_JOBS=${MAX_JOBS:-2}

# Build from a copy of the working tree so the CPU build in the checkout is left alone.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work")
"$venv/bin/pip" install -q --no-build-isolation --no-deps --target "$work/site" "$work" 2>&1 \
  | grep -v "^WARNING: Location" || true

cd "$work/site"  # not $work: its jwae_ext/ source folder (no _C) would shadow the build
PYTHONPATH="$work/site" "$venv/bin/python" - <<'PY'
import os

import jwae_ext
from jwae_ext.ops import registry

info = jwae_ext.build_info()
print("built:", info)
assert info["backends"] == ["cpu", "cuda"], f"CUDA kernels were not compiled in: {info}"
archs = os.environ["TORCH_CUDA_ARCH_LIST"]
assert info["cuda_archs"], f"the build did not record its GPU architectures ({archs}): {info}"
ops = registry.operator_names()
assert ops, "no operators registered under torch.ops.jwae_ext"
missing = registry.missing_kernels(["CPU", "CUDA"])
assert not missing, f"operators without a kernel: {missing}"
print(f"CUDA build OK: {len(ops)} operators, each with CPU and CUDA kernels")
PY
