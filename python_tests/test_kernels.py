"""``--kernels compiled|reference`` and ``JWAE_EXT_KERNELS``: every operator through its
reference on demand, and a clear error for a device the build has no kernel for."""

import argparse
import json

import pytest
import torch

from jwae_ext import evaluate, experiments, ops, reference, selftest, train
from jwae_ext.ops.kernels import (
    ENV_VAR,
    add_kernels_option,
    kernel_mode,
    kernels,
    no_kernel_message,
    use_kernels,
    with_reference,
)
from jwae_ext.ops.registry import kernel_backends

# The operators: functions, not the result types (Ranks).
PUBLIC = [
    name
    for name in ops.__all__
    if callable(getattr(ops, name)) and not isinstance(getattr(ops, name), type)
]


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch):
    """Each test starts without the variable and leaves it as it was."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_every_public_operator_has_a_reference_fallback():
    for name in PUBLIC:
        function = getattr(ops, name)
        assert hasattr(function, "__wrapped__"), f"jwae_ext.ops.{name} is not @with_reference"
        assert callable(getattr(reference, name)), f"jwae_ext.reference has no {name}"


@pytest.mark.parametrize("case", selftest.CASES, ids=lambda c: c.name)
def test_reference_mode_runs_no_kernel_and_gives_the_reference(case):
    inputs = selftest.leaves(case.inputs(torch.Generator().manual_seed(0)), "cpu", torch.float32)
    reached = selftest.ReachedOperators()
    with kernels("reference"), reached:
        got = selftest.tensors_of(case.call(ops, *inputs))
    want = selftest.tensors_of(case.call(reference, *inputs))
    assert reached.names == set()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    with kernels("compiled"), reached:
        case.call(ops, *inputs)
    assert reached.names  # the same calls reach the kernels in compiled mode


def test_reference_mode_runs_on_another_device():
    """On ``meta`` the compiled path reaches the operators' fake kernels; the references only
    torch's own operators."""
    img, txt = (torch.empty(6, 4, device="meta", requires_grad=True) for _ in range(2))
    compiled = {"jwae_ext::mh_loss", "jwae_ext::mh_loss_backward"}
    for mode, reaches in (("compiled", compiled), ("reference", set())):
        reached = selftest.ReachedOperators()
        with kernels(mode), reached:
            loss = ops.mh_loss(img, txt, normalize=True)
            loss.backward()
        assert reached.names == reaches
        assert loss.device.type == "meta" and img.grad.device.type == "meta"


def test_the_mode_comes_from_the_environment(monkeypatch):
    assert kernel_mode() == "compiled"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert kernel_mode() == "reference"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR} must be one of"):
        ops.discriminator_loss(torch.zeros(2), torch.zeros(2))


def test_use_kernels_and_the_context_manager():
    with kernels("reference"):
        assert kernel_mode() == "reference"
        with kernels("compiled"):
            assert kernel_mode() == "compiled"
        assert kernel_mode() == "reference"
    assert kernel_mode() == "compiled"
    use_kernels("reference")
    assert kernel_mode() == "reference"
    with pytest.raises(ValueError, match=r"argument 'mode' must be one of .* got 'gpu'"):
        use_kernels("gpu")


def test_the_option_applies_the_mode_and_leaves_the_namespace_alone():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=1)
    add_kernels_option(p)
    assert vars(p.parse_args([])) == {"epochs": 1} and kernel_mode() == "compiled"
    assert vars(p.parse_args(["--kernels", "reference"])) == {"epochs": 1}
    assert kernel_mode() == "reference"
    with pytest.raises(SystemExit):
        p.parse_args(["--kernels", "fast"])


def test_a_device_without_a_kernel_names_both_ways_out():
    sparse = torch.randn(4, 3).to_sparse()
    with pytest.raises(NotImplementedError) as raised:
        ops.mh_loss(sparse, sparse)
    message = str(raised.value)
    assert message.startswith("jwae_ext.mh_loss: this build of jwae_ext has no kernel for tensors")
    assert "'SparseCPU' backend (its kernels: CPU" in message
    assert "FORCE_CUDA=1 pip install --no-build-isolation ." in message
    assert "--kernels reference" in message and f"{ENV_VAR}=reference" in message
    assert "Could not run" in str(raised.value.__cause__)  # the dispatcher's, kept as the cause


def test_the_message_for_a_gpu_lists_the_kernels_built():
    message = no_kernel_message("xattn_scores", "CUDA")
    built = ", ".join(kernel_backends("jwae_ext::xattn_scores"))
    assert f"no kernel for tensors on the 'CUDA' backend (its kernels: {built})" in message


def test_other_not_implemented_errors_pass_unchanged():
    def compiled():
        raise NotImplementedError("a feature")

    with pytest.raises(NotImplementedError, match=r"^a feature$"):
        with_reference(lambda: None)(compiled)()


# ---- the command lines ---------------------------------------------------------------------------

TINY = [
    "--train-images", "32", "--eval-images", "24", "--batch-size", "16", "--embed-size", "16",
    "--img-hidden", "16", "--word-dim", "8", "--warmup-epochs", "1", "--epochs", "1",
    "--no-progress", "--device", "cpu",
]  # fmt: skip
# Training in both modes differs by float32 summation order only: the losses agree to this,
# and the test tables (ranks of 24 images, 120 captions) are equal.
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        for mode in ("compiled", "reference"):
            patch.delenv(ENV_VAR, raising=False)
            argv = ["--run-dir", str(folder), "--name", mode, *TINY, "--kernels", mode]
            assert train.main(argv) == 0
            assert kernel_mode() == mode
    return folder


def test_train_gives_the_same_losses_and_table_with_either_mode(runs):
    metrics = {
        mode: json.loads((runs / mode / "metrics.jsonl").read_text().splitlines()[-1])["train"]
        for mode in ("compiled", "reference")
    }
    assert metrics["compiled"].keys() == metrics["reference"].keys()
    for term, value in metrics["compiled"].items():
        assert value == pytest.approx(metrics["reference"][term], rel=LOSS_RTOL), term
    compiled, reference_ = (json.loads((runs / m / "test.json").read_text()) for m in metrics)
    assert compiled["i2t"] == reference_["i2t"] and compiled["t2i"] == reference_["t2i"]


def test_evaluate_gives_the_same_table_with_either_mode(runs, tmp_path, capsys):
    tables = {}
    for mode in ("compiled", "reference"):
        out = tmp_path / f"{mode}.json"
        argv = [str(runs / "compiled"), "--out", str(out), "--device", "cpu", "--kernels", mode]
        assert evaluate.main(argv) == 0
        tables[mode] = json.loads(out.read_text())
    capsys.readouterr()
    assert tables["compiled"]["i2t"] == tables["reference"]["i2t"]
    assert tables["compiled"]["t2i"] == tables["reference"]["t2i"]


def test_experiments_pass_the_mode_to_every_run(monkeypatch, tmp_path, capsys):
    started = []

    def fake_train(flags):
        started.append(flags)
        return 1  # stop the job at its first run

    monkeypatch.setattr(train, "main", fake_train)
    argv = ["poster", "--quick", "--seeds", "0", "--out", str(tmp_path), "--kernels", "reference"]
    assert experiments.main(argv) == 2
    assert "training" in capsys.readouterr().err
    assert started and started[0][started[0].index("--kernels") + 1] == "reference"
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["kernels"] == "reference"


def test_a_bad_environment_variable_stops_train_with_a_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV_VAR, "fast")
    assert train.main(["--run-dir", str(tmp_path), *TINY]) == 2
    assert f"{ENV_VAR} must be one of ('compiled', 'reference'), got 'fast'" in (
        capsys.readouterr().err
    )
