"""Load the module CMakeLists.txt built and check it registers the same operators, with the same
kernels, as the pip-installed build (both come from the same csrc/ sources)."""

import glob
import importlib.util
import json
import subprocess
import sys

import torch

LIST_OPS = """
import json, torch
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("jwae_ext::"))
print(json.dumps({n: torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU") for n in names}))
"""

path = glob.glob(f"{sys.argv[1]}/_C*.so")[0]
spec = importlib.util.spec_from_file_location("_C", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("jwae_ext::"))
cmake_ops = {n: torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU") for n in names}
pip_ops = json.loads(
    subprocess.check_output([sys.executable, "-c", "import jwae_ext\n" + LIST_OPS])
)
assert cmake_ops == pip_ops, f"CMake build {cmake_ops} differs from pip build {pip_ops}"
print(f"CMake build {path}: {module.build_info()}, {len(names)} operators as in the pip build")
