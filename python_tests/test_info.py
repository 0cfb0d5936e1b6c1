"""``python -m jwae_ext.info``: the build, the devices and the self-test of every operator."""

import json
import subprocess
import sys

import pytest
import torch

import jwae_ext
from jwae_ext import info, ops, selftest
from jwae_ext.ops.registry import operator_names


@pytest.fixture(scope="module")
def rows() -> list[selftest.Row]:
    return selftest.run(["cpu"])


def test_every_operator_passes_on_every_cpu_dtype(rows):
    failed = [r.as_dict() for r in rows if not r.passed]
    assert not failed
    assert {(r.device, r.dtype) for r in rows} == {("cpu", "float32"), ("cpu", "float64")}
    assert [r.operator for r in rows if r.dtype == "float64"] == [c.name for c in selftest.CASES]
    assert all(r.forward is not None for r in rows)


def test_every_registered_operator_is_reached_by_a_case(rows):
    """A new operator needs a self-test case: ``info`` (and this test) fail without one."""
    assert set(operator_names()) == set().union(*(r.reached for r in rows))


def test_an_operator_no_case_reaches_is_a_failed_row():
    without = tuple(c for c in selftest.CASES if c.name != "xattn_ranks")
    rows = selftest.run(["cpu"], cases=without)
    unreached = [r for r in rows if r.operator == "jwae_ext::xattn_ranks"]
    assert len(unreached) == 1 and not unreached[0].passed
    assert "no self-test case reaches" in unreached[0].error


def test_the_differentiable_operators_are_checked_backward_too(rows):
    backward = {r.operator for r in rows if r.backward is not None}
    no_gradient = {"retrieval_ranks", "retrieval_thresholds", "retrieval_count_at_least",
                   "xattn_ranks", "xattn_region_grams"}  # fmt: skip
    assert backward == {c.name for c in selftest.CASES} - no_gradient


def test_a_result_off_by_more_than_the_tolerance_fails(monkeypatch):
    right = ops.mmd_imq
    monkeypatch.setattr(ops, "mmd_imq", lambda z, prior: right(z, prior) * (1 + 1e-3))
    case = next(c for c in selftest.CASES if c.name == "mmd_imq")
    row = selftest.run_case(case, "cpu", torch.float32)
    assert not row.passed and row.forward.ratio > 1 and row.backward.ratio > 1
    assert row.forward.error > row.forward.allowed > 0


def test_a_wrong_index_fails_exactly(monkeypatch):
    right = ops.topk_search

    def swapped(queries, gallery, k):
        scores, indices = right(queries, gallery, k)
        return scores, indices.flip(1)

    monkeypatch.setattr(ops, "topk_search", swapped)
    case = next(c for c in selftest.CASES if c.name == "topk_search")
    row = selftest.run_case(case, "cpu", torch.float64)
    assert not row.passed and row.forward.allowed == 0 and row.forward.error >= 1


def test_the_table_and_exit_code_of_a_raising_kernel(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(ops, "discriminator_loss", broken)
    assert info.main([]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if "FAIL" in line and "FAILED" not in line]
    assert [line.split()[:3] for line in failed] == [
        ["discriminator_loss", "cpu", "float32"],
        ["discriminator_loss", "cpu", "float64"],
        ["jwae_ext::discriminator_loss", "-", "-"],  # no case reached it, since none ran it
    ]
    assert "RuntimeError: kernel exploded" in failed[0]
    assert f"3 of {2 * len(selftest.CASES) + 1} FAILED" in out


def test_info_prints_the_build_devices_and_a_passing_table(capsys):
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert f"jwae_ext {jwae_ext.__version__}" in out
    assert f"torch {torch.__version__}" in out and f"BLAS {info.blas()}" in out
    assert "kernels for cpu" in out and "cpu: threads" in out
    table = out[out.index("\noperator ") + 1 :].splitlines()
    rows = [line for line in table[1:] if line.strip() and not line.startswith("all ")]
    assert len(rows) == 2 * len(selftest.CASES) and all(line.endswith("pass") for line in rows)
    assert out.rstrip().splitlines()[-1].startswith(f"all {len(rows)} passed in ")


def test_json_parses_and_holds_every_row(capsys):
    assert info.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["build"]["backends"] == jwae_ext.build_info()["backends"]
    assert report["runtime"]["torch"] == torch.__version__
    assert report["devices"][0]["device"] == "cpu"
    assert report["summary"]["failed"] == 0
    assert report["summary"]["rows"] == len(report["selftest"]) == 2 * len(selftest.CASES)
    row = report["selftest"][0]
    assert row["passed"] and row["forward"]["max_error"] <= row["forward"]["tolerance"]
    assert set(row["operators_reached"]) <= set(operator_names())


def test_asking_for_an_absent_gpu_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert info.main(["--devices", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_a_bad_kernels_variable_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("JWAE_EXT_KERNELS", "fast")
    assert info.main([]) == 2
    assert "JWAE_EXT_KERNELS must be one of ('compiled', 'reference'), got 'fast'" in (
        capsys.readouterr().err
    )


# A wrong CPU kernel registered over the compiled one, in its own process: the loss is 1% off.
WRONG_KERNEL = """
import sys, torch, torch.nn.functional as F
import jwae_ext
from jwae_ext import info

def wrong(real, fake, grad_mask):
    loss = (F.softplus(-real.double()).mean() + F.softplus(fake.double()).mean()) * 1.01
    dtype = torch.float64 if torch.float64 in (real.dtype, fake.dtype) else torch.float32
    grads = [(-torch.sigmoid(-real) / real.numel()) if grad_mask[0] else real.new_empty(0),
             (torch.sigmoid(fake) / fake.numel()) if grad_mask[1] else fake.new_empty(0)]
    return loss.to(dtype), *grads

library = torch.library.Library("jwae_ext", "IMPL")
library.impl("discriminator_loss", wrong, "CPU")
sys.exit(info.main(sys.argv[1:]))
"""


def test_a_wrong_kernel_fails_its_row_and_exits_1():
    proc = subprocess.run([sys.executable, "-c", WRONG_KERNEL], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    rows = {tuple(line.split()[:3]): line for line in proc.stdout.splitlines() if " cpu " in line}
    for dtype in ("float32", "float64"):
        assert "FAIL" in rows[("discriminator_loss", "cpu", dtype)]
    assert sum("FAIL" in line for line in rows.values()) == 2
    assert f"2 of {2 * len(selftest.CASES)} FAILED" in proc.stdout
