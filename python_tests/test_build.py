"""The extension is built, loaded, and every operator is registered for every compiled backend."""

import torch

import jwae_ext
from jwae_ext.ops import registry


def test_build_info_reports_backends_and_versions():
    info = jwae_ext.build_info()
    assert info["backends"][0] == "cpu"
    assert set(info["backends"]) <= {"cpu", "cuda"}
    assert info["torch_runtime"] == torch.__version__
    # An extension compiled against another torch fails in odd ways; the versions must agree.
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert (info["cuda_version"] is None) == ("cuda" not in info["backends"])
    if "cuda" not in info["backends"]:
        assert info["cuda_archs"] is None
    elif info["cuda_archs"] is not None:  # None: a CMake build, which does not record them
        assert all(a.startswith(("sm_", "compute_")) for a in info["cuda_archs"]), info


def test_every_operator_has_a_kernel_for_every_compiled_backend():
    assert registry.operator_names(), "no operators registered under torch.ops.jwae_ext"
    keys = ["CPU", "CUDA"] if "cuda" in jwae_ext.build_info()["backends"] else ["CPU"]
    assert registry.missing_kernels(keys) == []


def test_every_public_operator_is_documented():
    for name in jwae_ext.ops.__all__:
        fn = getattr(jwae_ext.ops, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name
