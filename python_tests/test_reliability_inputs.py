"""Bad input, swept: every fault applied to every tensor argument of every public entry point.

Each entry point of :mod:`jwae_ext.ops` and :mod:`jwae_ext.retrieval` is described once below
(valid float64 inputs and the kind of each tensor argument); the tables apply every fault that
fits an argument's kind and check the outcome that docs/reliability.md states for it: a clear error
of the stated type whose message names the argument, or a correct result (compared with the
kernel on contiguous inputs and with the reference). The hand-written cases of each operator
(messages word for word, CUDA devices, dtype promotion) stay in its own test file.

A second device, where there is none, is the ``meta`` device: a call mixing it with CPU tensors is
dispatched to the fake kernels, which must refuse it as the C++ kernels refuse mixed devices.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from jwae_ext import ops, reference, retrieval

# ---- the entry points ---------------------------------------------------------------------------

# Kinds of tensor arguments:
#   "float": floats of a fixed rank whose length is tied to another argument's
#   "rows": floats of a fixed rank and any number of rows (galleries, prior samples)
#   "any": floats of any shape (discriminator logits)
#   "ids": int64 labels of any value, one per row of another argument
#   "index": int64 ids that index something: out of range is an error
#   "ranks": integer ranks (any integer dtype, any length)
# Non-finite values: "loss" (NaN gives NaN, an infinity its limit or a non-finite loss), "error"
# (refused, message naming the argument), "threshold" (NaN refused, infinities valid).


@dataclass(frozen=True)
class Entry:
    call: Callable
    ref: Callable | None
    make: Callable[[], dict]
    kinds: dict[str, str]
    nonfinite: str = "loss"
    nonfinite_overrides: dict[str, str] = field(default_factory=dict)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hinge_ids():
    return {"img_ids": torch.tensor([0, 1, 1, 2, 3]), "txt_ids": torch.tensor([0, 1, 1, 2, 3])}


def _retrieval_inputs():
    return {
        "img_emb": _rand(4, 3, seed=1),
        "cap_emb": _rand(8, 3, seed=2),
        "cap_to_img": torch.tensor([0, 1, 1, 2, 3, 0, 2, 3]),
    }


def _count_at_least_inputs():
    inputs = _retrieval_inputs()
    thresholds = reference.retrieval_thresholds(*inputs.values())
    return {**inputs, "img_thresholds": thresholds[0], "cap_thresholds": thresholds[1]}


_RETRIEVAL_KINDS = {"img_emb": "float", "cap_emb": "float", "cap_to_img": "index"}

ENTRIES = {
    "mh_loss": Entry(
        ops.mh_loss,
        reference.mh_loss,
        lambda: {"img_emb": _rand(5, 3, seed=1), "txt_emb": _rand(5, 3, seed=2), **_hinge_ids()},
        {"img_emb": "float", "txt_emb": "float", "img_ids": "ids", "txt_ids": "ids"},
    ),
    "mh_loss_from_scores": Entry(
        ops.mh_loss_from_scores,
        reference.mh_loss_from_scores,
        lambda: {"scores": _rand(5, 5, seed=3), **_hinge_ids()},
        {"scores": "float", "img_ids": "ids", "txt_ids": "ids"},
    ),
    "linear_cross_entropy": Entry(
        ops.linear_cross_entropy,
        reference.linear_cross_entropy,
        lambda: {
            "hidden": _rand(6, 3, seed=1),
            "weight": _rand(7, 3, seed=2),
            "target": torch.tensor([1, 0, 6, 2, 3, 0]),
            "bias": _rand(7, seed=3),
        },
        {"hidden": "float", "weight": "float", "target": "index", "bias": "float"},
    ),
    "wae_loss": Entry(
        lambda **kw: ops.wae_loss(**kw, batch_size=3),
        lambda **kw: reference.wae_loss(**kw, batch_size=3),
        lambda: {
            "img_feat": _rand(3, 4, seed=1),
            "img_rec": _rand(3, 4, seed=2),
            "dec_hidden": _rand(3, 2, 5, seed=3),
            "vocab_weight": _rand(6, 5, seed=4),
            "targets": torch.tensor([[1, 2], [5, 0], [3, 0]]),
            "d_logits_img": _rand(3, 1, seed=5),
            "d_logits_txt": _rand(3, seed=6),
            "vocab_bias": _rand(6, seed=7),
        },
        {
            "img_feat": "float",
            "img_rec": "float",
            "dec_hidden": "float",
            "vocab_weight": "float",
            "targets": "index",
            "d_logits_img": "any",
            "d_logits_txt": "any",
            "vocab_bias": "float",
        },
    ),
    "discriminator_loss": Entry(
        ops.discriminator_loss,
        reference.discriminator_loss,
        lambda: {"d_logits_real": _rand(4, 1, seed=1), "d_logits_fake": _rand(6, seed=2)},
        {"d_logits_real": "any", "d_logits_fake": "any"},
    ),
    "mmd_imq": Entry(
        ops.mmd_imq,
        reference.mmd_imq,
        lambda: {"z": _rand(5, 3, seed=1), "prior_samples": _rand(4, 3, seed=2)},
        {"z": "rows", "prior_samples": "rows"},
    ),
    "retrieval_ranks": Entry(
        ops.retrieval_ranks, reference.retrieval_ranks, _retrieval_inputs, _RETRIEVAL_KINDS, "error"
    ),
    "retrieval_thresholds": Entry(
        ops.retrieval_thresholds,
        reference.retrieval_thresholds,
        _retrieval_inputs,
        _RETRIEVAL_KINDS,
        "error",
    ),
    "retrieval_count_at_least": Entry(
        ops.retrieval_count_at_least,
        reference.retrieval_count_at_least,
        _count_at_least_inputs,
        {**_RETRIEVAL_KINDS, "img_thresholds": "float", "cap_thresholds": "float"},
        "error",
        {"img_thresholds": "threshold", "cap_thresholds": "threshold"},
    ),
    "topk_search": Entry(
        lambda **kw: ops.topk_search(**kw, k=3),
        lambda **kw: reference.topk_search(**kw, k=3),
        lambda: {"queries": _rand(4, 3, seed=1), "gallery": _rand(9, 3, seed=2)},
        {"queries": "rows", "gallery": "rows"},
        "error",
    ),
    "evaluate": Entry(
        retrieval.evaluate, None, _retrieval_inputs, _RETRIEVAL_KINDS, "error"
    ),
    "recall_table": Entry(
        retrieval.recall_table,
        None,
        lambda: {"ranks": torch.tensor([0, 3, 12, 1, 0, 7])},
        {"ranks": "ranks"},
    ),
}


# ---- running a call -----------------------------------------------------------------------------


def _flat(result) -> list[torch.Tensor]:
    """Every tensor (or number) of a result, in order: tensors, tuples, dicts of them."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in _flat(v)]
    if isinstance(result, tuple | list):
        return [t for v in result for t in _flat(v)]
    return [torch.tensor(float(result), dtype=torch.float64)]


def _outputs_and_grads(call: Callable, inputs: dict, leaves: list[torch.Tensor]):
    """The outputs of ``call(**inputs)`` and, when they are differentiable, the gradient of a
    fixed random combination of them with respect to ``leaves``."""
    outputs = _flat(call(**inputs))
    differentiable = [o for o in outputs if o.requires_grad]
    if not differentiable:
        return [o.detach() for o in outputs], []
    weights = [_rand(*o.shape, seed=99) for o in differentiable]
    objective = sum((o.double() * w).sum() for o, w in zip(differentiable, weights, strict=True))
    grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    return [o.detach() for o in outputs], [g for g in grads if g is not None]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape, f"{what}: output {i} shape {a.shape} != {b.shape}"
        torch.testing.assert_close(
            a.double(), b.double(), rtol=1e-9, atol=1e-12, equal_nan=True,
            msg=lambda m, i=i: f"{what}: output {i}: {m}",
        )  # fmt: skip


def _names_argument(message: str, arg: str) -> bool:
    return message.startswith("jwae_ext:") and re.search(rf"\b{arg}\b", message) is not None


# ---- faults -------------------------------------------------------------------------------------

_FLOAT_KINDS = ("float", "rows", "any")


def _set_element(t: torch.Tensor, value: float, position: int) -> torch.Tensor:
    flat = t.detach().clone().reshape(-1)
    flat[position] = value
    return flat.reshape(t.shape)


# fault -> (kinds it applies to, how it changes the argument)
FAULTS: dict[str, tuple[tuple[str, ...], Callable[[torch.Tensor], object]]] = {
    "not a tensor": (("float", "rows", "any", "ids", "index", "ranks"), lambda t: t.tolist()),
    "int64 floats": (_FLOAT_KINDS, lambda t: t.long()),
    "float16 on CPU": (_FLOAT_KINDS, lambda t: t.half()),
    "float ids": (("ids", "index", "ranks"), lambda t: t.double()),
    "int32 ids": (("ids", "index", "ranks"), lambda t: t.int()),
    "extra leading dim": (("float", "rows", "any", "ids", "index", "ranks"), lambda t: t[None]),
    "empty": (("float", "rows", "any", "ids", "index", "ranks"), lambda t: t[:0]),
    "one row short": (("float", "rows", "any", "ids", "index", "ranks"), lambda t: t[:-1]),
    "id too large": (("ids", "index", "ranks"), lambda t: t + 1000),
    "id negative": (("ids", "index", "ranks"), lambda t: t - 1000),
    "other device (meta)": (("float", "rows", "any", "ids", "index"), lambda t: t.to("meta")),
}

# What each fault gets, by argument kind; None: a valid input (the result is checked instead).
_OUTCOMES = {
    "not a tensor": (TypeError, "must be a torch.Tensor"),
    "int64 floats": (TypeError, None),
    "float16 on CPU": (TypeError, None),
    "float ids": (TypeError, None),
    "int32 ids": (TypeError, "int64"),
    "extra leading dim": (ValueError, None),
    "empty": (ValueError, None),
    "one row short": (ValueError, None),
    "id too large": (ValueError, None),
    "id negative": (ValueError, None),
    "other device (meta)": (ValueError, "same device"),
}
_VALID = {
    # Labels of any value; ranks of any integer dtype and count; logits of any shape and count;
    # query, gallery and sample counts that are independent of the other argument's.
    ("ids", "id too large"),
    ("ids", "id negative"),
    ("ranks", "int32 ids"),
    ("ranks", "one row short"),
    ("ranks", "id too large"),
    ("any", "extra leading dim"),
    ("any", "one row short"),
    ("rows", "one row short"),
}


def _fault_cases():
    for name, entry in ENTRIES.items():
        for arg, kind in entry.kinds.items():
            for fault, (kinds, _) in FAULTS.items():
                if kind in kinds:
                    yield pytest.param(name, arg, fault, id=f"{name}-{arg}-{fault}")


@pytest.mark.parametrize(("name", "arg", "fault"), list(_fault_cases()))
def test_fault(name, arg, fault):
    entry = ENTRIES[name]
    inputs = entry.make()
    inputs[arg] = FAULTS[fault][1](inputs[arg])
    if (entry.kinds[arg], fault) in _VALID:
        _assert_correct(entry, inputs, f"{name}({arg}: {fault})")
        return
    error, message = _OUTCOMES[fault]
    if entry.kinds[arg] == "ranks" and fault == "id negative":
        message = ">= 0"
    with pytest.raises(error, match=message) as raised:
        entry.call(**inputs)
    assert _names_argument(str(raised.value), arg), str(raised.value)


def _assert_correct(entry: Entry, inputs: dict, what: str) -> None:
    """The result equals the reference's (for the functions of ranks: their definition)."""
    got = _flat(entry.call(**inputs))
    if entry.ref is not None:
        _assert_same(got, _flat(entry.ref(**inputs)), what)
        return
    ranks = inputs["ranks"].long()
    n = len(ranks)
    want = [100 * int((ranks < k).sum()) / n for k in (1, 5, 10)]
    want += [np.floor(np.median(ranks.numpy())) + 1, ranks.double().mean() + 1]
    _assert_same(got, [torch.as_tensor(w, dtype=torch.float64) for w in want], what)


# ---- NaN and infinity ---------------------------------------------------------------------------

_BIG = 1e300  # the finite stand-in for an infinity, to check that a finite result is its limit


def _nonfinite_cases():
    for name, entry in ENTRIES.items():
        for arg, kind in entry.kinds.items():
            if kind in _FLOAT_KINDS:
                for value in ("nan", "inf", "-inf"):
                    yield pytest.param(name, arg, value, id=f"{name}-{arg}-{value}")


@pytest.mark.parametrize(("name", "arg", "value"), list(_nonfinite_cases()))
def test_nonfinite(name, arg, value):
    """Losses: NaN in gives NaN out; an infinity gives a non-finite loss or the finite limit the
    loss has for huge values (e.g. softplus(-inf) = 0), never another finite number. Ranking:
    refused, naming the argument. Thresholds: NaN refused, infinities counted against."""
    entry = ENTRIES[name]
    behaviour = entry.nonfinite_overrides.get(arg, entry.nonfinite)
    inputs = entry.make()
    # Position 1: an off-diagonal score, i.e. a negative pair, where an infinity matters.
    inputs[arg] = _set_element(inputs[arg], float(value), position=1)
    if behaviour == "error" or (behaviour == "threshold" and value == "nan"):
        with pytest.raises(ValueError, match=r"finite|NaN") as raised:
            entry.call(**inputs)
        assert _names_argument(str(raised.value), arg)
        return
    got = _flat(entry.call(**inputs))
    if behaviour == "threshold":
        _assert_same(got, _flat(entry.ref(**inputs)), f"{name}({arg}={value})")
        return
    loss = got[0]
    if value == "nan":
        assert torch.isnan(loss), f"{name}: NaN in '{arg}' gave {loss}"
    elif torch.isfinite(loss):
        sign = -1.0 if value == "-inf" else 1.0
        want = _flat(entry.ref(**{**inputs, arg: _set_element(inputs[arg], sign * _BIG, 1)}))[0]
        torch.testing.assert_close(loss, want, msg=f"{name}: {value} in '{arg}' gave {loss}")


# ---- layouts: non-contiguous, transposed, sliced and expanded tensors ---------------------------

LAYOUTS = {
    # Same values, other strides (and storage offsets).
    "transposed": lambda t: t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() > 1 else t,
    "every other column": lambda t: torch.stack([t, t + 7], dim=-1)[..., 0],
    "every other row": lambda t: torch.stack([t, t + 7], dim=1)[:, 0] if t.dim() > 1 else t,
    "sliced at an offset": lambda t: torch.cat([t[..., :1] + 7, t], dim=-1)[..., 1:],
    # Other values: every row a view of the first (stride 0).
    "expanded": lambda t: t[:1].expand(t.shape),
}


def _layout_cases():
    """Every layout that makes the argument non-contiguous."""
    for name, entry in ENTRIES.items():
        for arg in entry.kinds:
            for layout, lay_out in LAYOUTS.items():
                if not lay_out(entry.make()[arg]).is_contiguous():
                    yield pytest.param(name, arg, layout, id=f"{name}-{arg}-{layout}")


@pytest.mark.parametrize(("name", "arg", "layout"), list(_layout_cases()))
def test_layout(name, arg, layout):
    """Any strides give the result (and gradients) of the same values laid out contiguously,
    which is the reference's; invalid values (e.g. an expanded id that leaves an image without
    captions) give the same error."""
    entry = ENTRIES[name]
    leaves = {k: v.requires_grad_(v.is_floating_point()) for k, v in entry.make().items()}
    float_leaves = [v for v in leaves.values() if v.requires_grad]
    strided = LAYOUTS[layout](leaves[arg])
    outcomes = []
    for tensor in (strided, strided.contiguous()):
        try:
            outcomes.append(_outputs_and_grads(entry.call, {**leaves, arg: tensor}, float_leaves))
        except (ValueError, TypeError) as err:
            outcomes.append(str(err))
    if isinstance(outcomes[1], str):
        assert outcomes[0] == outcomes[1]
        return
    (got, got_grads), (want, want_grads) = outcomes
    _assert_same(got, want, f"{name}({arg} {layout})")
    _assert_same(got_grads, want_grads, f"{name}({arg} {layout}) gradients")
    if entry.ref is not None:
        _assert_same(got, _flat(entry.ref(**{**leaves, arg: strided})), f"{name} vs reference")


# ---- the meta device: shapes only, one device per call -------------------------------------------


@pytest.mark.parametrize("name", [n for n in ENTRIES if n not in ("evaluate", "recall_table")])
def test_all_meta_inputs_give_meta_outputs_of_the_real_shapes(name):
    entry = ENTRIES[name]
    real = _flat(entry.call(**entry.make()))
    meta = _flat(entry.call(**{k: v.to("meta") for k, v in entry.make().items()}))
    assert [t.device.type for t in meta] == ["meta"] * len(real)
    assert [(t.shape, t.dtype) for t in meta] == [(t.shape, t.dtype) for t in real]


@pytest.mark.parametrize("name", ["evaluate", "recall_table"])
def test_metrics_of_meta_tensors_are_refused(name):
    entry = ENTRIES[name]
    with pytest.raises(ValueError, match="meta"):
        entry.call(**{k: v.to("meta") for k, v in entry.make().items()})


# ---- numbers: huge values, numpy scalars, wrong containers ---------------------------------------

_HUGE = 2**70


@pytest.mark.parametrize(
    ("call", "arg", "error", "message"),
    [
        (lambda: ops.topk_search(_rand(3, 2, seed=1), _rand(4, 2, seed=2), _HUGE), "k",
         ValueError, "fit in int64"),
        (lambda: ops.topk_search(_rand(3, 2, seed=1), _rand(4, 2, seed=2), 2**62), "k",
         ValueError, r"must be in \[1, 4\]"),
        (lambda: ops.topk_search(_rand(3, 2, seed=1), _rand(4, 2, seed=2), -_HUGE), "k",
         ValueError, "fit in int64"),
        (lambda: ops.wae_loss(**ENTRIES["wae_loss"].make(), batch_size=_HUGE), "batch_size",
         ValueError, "fit in int64"),
        (lambda: ops.wae_loss(**ENTRIES["wae_loss"].make(), batch_size=3, ignore_index=-_HUGE),
         "ignore_index", ValueError, "fit in int64"),
        (lambda: ops.linear_cross_entropy(**ENTRIES["linear_cross_entropy"].make(),
                                          ignore_index=_HUGE),
         "ignore_index", ValueError, "fit in int64"),
        (lambda: ops.mh_loss(**ENTRIES["mh_loss"].make(), margin=2**1100), "margin",
         ValueError, "must be finite"),
        (lambda: ops.mmd_imq(**ENTRIES["mmd_imq"].make(), scales=2.0), "scales",
         TypeError, "sequence of numbers"),
        (lambda: ops.mmd_imq(**ENTRIES["mmd_imq"].make(), scales=torch.ones(2)), "scales",
         TypeError, "sequence of numbers"),
        (lambda: ops.wae_loss(**ENTRIES["wae_loss"].make(), batch_size=3, weights=0.5),
         "weights", TypeError, "sequence of numbers"),
        (lambda: ops.wae_loss(**ENTRIES["wae_loss"].make(), batch_size=3,
                              weights=(1, 1, 1, 2**1100)), "weights", ValueError, "finite"),
    ],
)  # fmt: skip
def test_bad_numbers(call, arg, error, message):
    with pytest.raises(error, match=message) as raised:
        call()
    assert _names_argument(str(raised.value), arg)


@pytest.mark.parametrize(
    ("numpy_call", "python_call"),
    [
        (lambda i: ops.mh_loss(**i, margin=np.float32(0.25)),
         lambda i: ops.mh_loss(**i, margin=0.25)),
        (lambda i: ops.topk_search(i["img_emb"], i["txt_emb"], np.int64(2)),
         lambda i: ops.topk_search(i["img_emb"], i["txt_emb"], 2)),
        (lambda i: ops.mmd_imq(i["img_emb"], i["txt_emb"], np.array([0.5, 2.0])),
         lambda i: ops.mmd_imq(i["img_emb"], i["txt_emb"], [0.5, 2.0])),
    ],
)  # fmt: skip
def test_numpy_scalars_are_numbers(numpy_call, python_call):
    inputs = ENTRIES["mh_loss"].make()
    _assert_same(_flat(numpy_call(inputs)), _flat(python_call(inputs)), "numpy scalars")


@pytest.mark.parametrize("argument", ["batch_size", "ignore_index"])
def test_numpy_integers_are_ints(argument):
    inputs = ENTRIES["wae_loss"].make()
    python = ops.wae_loss(**inputs, batch_size=3, ignore_index=0)
    kwargs = {"batch_size": 3, "ignore_index": 0, argument: np.int64(3 if argument == "batch_size"
                                                                    else 0)}  # fmt: skip
    _assert_same(_flat(ops.wae_loss(**inputs, **kwargs)), _flat(python), argument)
