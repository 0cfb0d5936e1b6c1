"""wae_loss against its torch-op reference."""

from __future__ import annotations

import pytest
import torch
from float_inputs import FLOATS, leaves, tolerance
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext import ops, reference


def make_wae_inputs(B, D, L, H, V, *, seed, dtype=torch.float64, device="cpu", ignored=0.3,
                    ignore_index=0, bias=True, logit_scale=1.0):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    feat, rec, hidden, weight, d_img, d_txt, b = leaves(
        gen, dtype, device, (B, D), (B, D), (B, L, H), (V, H), (B, 1), (B,), (V,)
    )
    with torch.no_grad():
        d_img.mul_(logit_scale)
        d_txt.mul_(logit_scale)
    targets = torch.randint(0, V, (B, L), generator=gen)
    targets[torch.rand(B, L, generator=gen) < ignored] = ignore_index
    return {
        "img_feat": feat,
        "img_rec": rec,
        "dec_hidden": hidden,
        "vocab_weight": weight,
        "targets": targets.to(device),
        "d_logits_img": d_img,
        "d_logits_txt": d_txt,
        "vocab_bias": b if bias else None,
    }


def wae_values_and_grads(fn, inputs, **kwargs):
    total, terms = fn(**inputs, **kwargs)
    assert list(terms) == ["recon", "nll", "adv_img", "adv_txt"]
    grads = torch.autograd.grad(
        total * 1.7, [t for t in inputs.values() if t is not None and t.requires_grad]
    )
    return [total.detach(), torch.stack(list(terms.values())), *grads]


@given(
    B=st.integers(1, 12),
    D=st.integers(1, 40),
    L=st.integers(1, 12),
    H=st.integers(1, 40),
    V=st.integers(2, 300),
    recon=st.sampled_from(["l1", "l2"]),
    weights=st.lists(st.floats(0.0, 2.0), min_size=4, max_size=4),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    ignore_index=st.sampled_from([0, -100]),
    bias=st.booleans(),
    dtype=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**31 - 1),
)
def test_wae_loss_matches_reference(B, D, L, H, V, recon, weights, ignored, ignore_index, bias,
                                    dtype, seed):  # fmt: skip
    inputs = make_wae_inputs(B, D, L, H, V, seed=seed, dtype=dtype, ignored=ignored,
                             ignore_index=ignore_index, bias=bias)  # fmt: skip
    kwargs = {"batch_size": B, "weights": weights, "recon": recon, "ignore_index": ignore_index}
    ours = wae_values_and_grads(ops.wae_loss, inputs, **kwargs)
    ref = wae_values_and_grads(reference.wae_loss, inputs, **kwargs)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tolerance(dtype))


def test_wae_loss_terms_are_detached_and_total_is_their_weighted_sum():
    inputs = make_wae_inputs(3, 4, 5, 6, 7, seed=1)
    weights = (0.5, 0.25, 2.0, 3.0)
    total, terms = ops.wae_loss(**inputs, batch_size=3, weights=weights)
    assert total.shape == () and total.requires_grad
    values = torch.stack(list(terms.values()))
    assert values.shape == (4,) and not values.requires_grad
    torch.testing.assert_close(total.detach(), (values * torch.tensor(weights).double()).sum())


@pytest.mark.parametrize(
    "absent", [["d_logits_img"], ["d_logits_txt"], ["d_logits_img", "d_logits_txt"]]
)
def test_wae_loss_without_discriminator_logits(absent):
    inputs = make_wae_inputs(3, 4, 5, 6, 7, seed=14)
    for name in absent:
        inputs[name] = None
    ours = wae_values_and_grads(ops.wae_loss, inputs, batch_size=3)
    ref = wae_values_and_grads(reference.wae_loss, inputs, batch_size=3)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, **tolerance(torch.float64))
    _, terms = ops.wae_loss(**inputs, batch_size=3)
    for name in absent:
        assert terms[name.replace("d_logits", "adv")] == 0


def test_wae_loss_gradient_only_for_img_feat():
    inputs = make_wae_inputs(3, 4, 2, 5, 6, seed=2)
    for name in ("img_rec", "dec_hidden", "vocab_weight", "d_logits_img", "d_logits_txt"):
        inputs[name].requires_grad_(False)
    inputs["vocab_bias"] = None
    total, _ = ops.wae_loss(**inputs, batch_size=3)
    (g,) = torch.autograd.grad(total, inputs["img_feat"])
    expected = -0.05 * torch.sign(inputs["img_rec"] - inputs["img_feat"].detach()) / 3
    torch.testing.assert_close(g, expected)


def test_wae_loss_extreme_logits_stay_finite():
    inputs = make_wae_inputs(4, 3, 3, 5, 6, seed=3, logit_scale=300.0, ignored=1.0)
    total, terms = ops.wae_loss(**inputs, batch_size=4)
    total.backward()
    values = torch.stack(list(terms.values()))
    assert torch.isfinite(values).all() and terms["nll"] == 0  # every caption token ignored
    _, ref_terms = reference.wae_loss(**inputs, batch_size=4)
    torch.testing.assert_close(values, torch.stack(list(ref_terms.values())))


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_wae_loss_gradcheck(recon):
    inputs = make_wae_inputs(2, 3, 2, 3, 4, seed=4, ignored=0.25)
    names = list(inputs)

    def fn(*args):
        total, _ = ops.wae_loss(**dict(zip(names, args, strict=True)), batch_size=2, recon=recon,
                                weights=(0.7, 0.6, 0.5, 0.4))  # fmt: skip
        return total

    # |rec - feat| has a kink at 0; the random inputs stay far from it.
    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_wae_loss_opcheck():
    inputs = make_wae_inputs(3, 4, 2, 5, 6, seed=5, dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.jwae_ext.wae_loss.default,
        (*inputs.values(), 3, [0.05, 0.005, 0.01, 0.01], "l2", 0, [True] * 6),
    )


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"recon": "l3"}, ValueError, r"'recon' must be one of \('l1', 'l2'\), got 'l3'"),
        ({"batch_size": 0}, ValueError, r"'batch_size' must be positive, got 0"),
        ({"batch_size": 2.5}, TypeError, r"'batch_size' must be an int"),
        ({"weights": (1.0, 2.0, 3.0)}, ValueError, r"'weights' must hold 4 numbers"),
        ({"weights": (1.0, 2.0, 3.0, float("nan"))}, ValueError, r"'weights' must be finite"),
        ({"img_rec": torch.randn(3, 5, dtype=torch.float64)}, ValueError,
         r"'img_rec' must have the shape of 'img_feat'"),
        ({"img_rec": torch.randn(3, 4)}, TypeError,
         r"'img_feat' and 'img_rec' must have the same dtype"),
        ({"targets": torch.zeros(3, 3, dtype=torch.long)}, ValueError,
         r"'targets' must have shape \[3, 2\]"),
        ({"targets": torch.full((3, 2), 6)}, ValueError,
         r"'targets'.*\[0, 6\).*got 6 at position 0"),
        ({"vocab_weight": torch.randn(6, 4, dtype=torch.float64)}, ValueError,
         r"'vocab_weight' must have 5 columns"),
        ({"d_logits_txt": torch.zeros(0)}, ValueError, r"'d_logits_txt' must not be empty"),
        ({"dec_hidden": torch.randn(5, dtype=torch.float64)}, ValueError,
         r"'dec_hidden' must be a \(\.\.\., hidden size\) tensor"),
        ({"img_feat": "features"}, TypeError, r"'img_feat' must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_wae_loss_errors(overrides, error, match):
    inputs = make_wae_inputs(3, 4, 2, 5, 6, seed=6)
    kwargs = {"batch_size": 3}
    for key, value in overrides.items():
        (inputs if key in inputs else kwargs)[key] = value
    with pytest.raises(error, match=match):
        ops.wae_loss(**inputs, **kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_cuda_matches_cpu(dtype):
    cpu = make_wae_inputs(16, 32, 12, 24, 5000, seed=10, dtype=dtype)
    gpu = {k: v if v is None else v.detach().cuda().requires_grad_(v.requires_grad)
           for k, v in cpu.items()}  # fmt: skip
    for recon in ("l1", "l2"):
        a = wae_values_and_grads(ops.wae_loss, cpu, batch_size=16, recon=recon)
        b = wae_values_and_grads(ops.wae_loss, gpu, batch_size=16, recon=recon)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y.cpu(), x, **tolerance(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    inputs = make_wae_inputs(8, 16, 6, 32, 3000, seed=12, dtype=dtype, device="cuda")
    as_fp32 = {k: v if v is None or not v.is_floating_point()
               else v.detach().float().requires_grad_() for k, v in inputs.items()}  # fmt: skip
    ours = wae_values_and_grads(ops.wae_loss, inputs, batch_size=8)
    ref = wae_values_and_grads(reference.wae_loss, as_fp32, batch_size=8)
    assert ours[0].dtype == torch.float32
    for a, b in zip(ours, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


@pytest.mark.cuda
def test_cuda_device_mismatch():
    inputs = make_wae_inputs(3, 4, 2, 5, 6, seed=13, device="cuda")
    inputs["img_rec"] = inputs["img_rec"].detach().cpu()
    with pytest.raises(ValueError, match="'dec_hidden' and 'img_rec' must be on the same device"):
        ops.wae_loss(**inputs, batch_size=3)
