"""The self-test of ``python -m jwae_ext.info``: every operator against its reference, here.

Each :class:`Case` calls one public operator of :mod:`jwae_ext.ops` on small inputs made to hold
duplicates, ties and padding, forward and backward, and the same call of its formulation in
:mod:`jwae_ext.reference` on the same values in float64 on the CPU (the ground truth, whatever the
device under test). Every case runs on every available device, in every dtype the kernels take
there (:data:`DTYPES`), and is compared with the table of :mod:`jwae_ext.ops.tolerances` that
the tests use. Which ``torch.ops.jwae_ext`` operators a case reaches is recorded as it runs, so a
registered operator that no case reaches is reported as a failure, not skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jwae_ext import ops, reference
from jwae_ext.ops.kernels import kernels
from jwae_ext.ops.registry import NAMESPACE, operator_names
from jwae_ext.ops.tolerances import tolerance

DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
SEED = 0
# Scores are multiples of 1/4 (see _integers): a margin off that grid keeps every hinge off its
# kink, where the kernels' subgradient (0) and autograd's through clamp (1) may differ.
MARGIN = 0.3


@dataclass(frozen=True)
class Case:
    """One call of an operator: ``call(impl, *inputs)`` with ``impl`` :mod:`jwae_ext.ops` or
    :mod:`jwae_ext.reference`; ``inputs(generator)`` gives float64 and int64 CPU tensors (the
    float ones are cast to the dtype under test and differentiated)."""

    name: str
    inputs: Callable[[torch.Generator], list[torch.Tensor]]
    call: Callable[..., object]


@dataclass
class Comparison:
    """The worst element over the compared tensors: its error and the tolerance there."""

    error: float = 0.0
    allowed: float = 0.0
    ratio: float = 0.0  # error / allowed; > 1 fails

    def add(self, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
        got, want = got.detach().cpu(), want.detach().cpu()
        if got.shape != want.shape:
            raise AssertionError(f"shape {tuple(got.shape)}, reference {tuple(want.shape)}")
        if not want.is_floating_point():  # ranks, counts, indices: exact
            error = (got.long() - want.long()).abs()
            allowed = torch.zeros_like(error, dtype=torch.float64)
        else:
            got, want = got.double(), want.double()
            both_nan = got.isnan() & want.isnan()
            error = torch.where(both_nan, 0.0, (got - want).abs().nan_to_num(float("inf")))
            allowed = tolerance(dtype).bound(torch.where(both_nan, 0.0, want.nan_to_num()))
        if error.numel() == 0:
            return
        ratios = torch.where(error == 0, 0.0, error.double() / allowed)
        worst = int(ratios.argmax())
        if float(ratios.flatten()[worst]) >= self.ratio:
            self.error = float(error.flatten()[worst])
            self.allowed = float(allowed.flatten()[worst])
            self.ratio = float(ratios.flatten()[worst])

    def as_dict(self) -> dict:
        return {"max_error": self.error, "tolerance": self.allowed, "passed": self.ratio <= 1}


@dataclass
class Row:
    """The result of one case on one device in one dtype."""

    operator: str
    device: str
    dtype: str
    forward: Comparison | None = None
    backward: Comparison | None = None
    seconds: float = 0.0
    error: str | None = None
    reached: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        return self.error is None and all(
            c is None or c.ratio <= 1 for c in (self.forward, self.backward)
        )

    def as_dict(self) -> dict:
        return {
            "operator": self.operator,
            "device": self.device,
            "dtype": self.dtype,
            "forward": self.forward.as_dict() if self.forward else None,
            "backward": self.backward.as_dict() if self.backward else None,
            "passed": self.passed,
            "seconds": self.seconds,
            "error": self.error,
            "operators_reached": sorted(self.reached),
        }


class ReachedOperators(TorchDispatchMode):
    """Records the ``torch.ops.jwae_ext`` operators dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith(f"{NAMESPACE}::"):
            self.names.add(name)
        return func(*args, **(kwargs or {}))


# ---- inputs: duplicates, ties and padding ----------------------------------------------------


def _integers(gen: torch.Generator, *shape: int, low: int = -2, high: int = 3) -> torch.Tensor:
    """Small integers over 2: every product and sum is exact in every dtype (bf16 included), so
    equal scores tie exactly in the kernel and in the reference alike."""
    return torch.randint(low, high, shape, generator=gen).double() / 2


def _normal(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _pair_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """Paired embeddings with a duplicated image and caption; ids give image 2 two captions."""
    img, txt = _integers(gen, 10, 8), _integers(gen, 10, 8)
    img[7], txt[5] = img[2], txt[3]
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2, 8, 9])
    return [img, txt, ids, ids.clone()]


def _score_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    scores = _integers(gen, 9, 9, low=-3, high=4)
    ids = torch.tensor([0, 1, 1, 3, 4, 5, 6, 7, 0])
    return [scores, ids, ids.clone()]


def _gallery_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """5 images (one duplicated) and 11 captions (two duplicated), 1 to 3 captions per image,
    listed out of order."""
    img, cap = _integers(gen, 5, 6), _integers(gen, 11, 6)
    img[4], cap[9], cap[10] = img[1], cap[0], cap[0]
    cap_to_img = torch.tensor([2, 0, 4, 1, 1, 3, 0, 2, 2, 3, 4])
    return [img, cap, cap_to_img]


def _xattn_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """3 images of 4 regions (one duplicated); 5 captions padded to 6 words with NaN (unread)."""
    images = _normal(gen, 3, 4, 8)
    images[2] = images[0]
    captions = _normal(gen, 5, 6, 8)
    lengths = torch.tensor([6, 3, 1, 4, 2])
    for c, n in enumerate(lengths.tolist()):
        captions[c, n:] = float("nan")
    return [images, captions, lengths, torch.tensor([1, 0, 2, 2, 0])]


def _token_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """12 tokens over a vocabulary of 9 (ids repeat), 4 of them padding (id 0, ignored)."""
    hidden, weight, bias = _normal(gen, 12, 8), _normal(gen, 9, 8, scale=0.5), _normal(gen, 9)
    target = torch.tensor([3, 5, 3, 0, 8, 1, 0, 3, 2, 0, 0, 7])
    return [hidden, weight, bias, target]


def _wae_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """3 pairs; reconstructions equal to the features at some elements (an L1 kink); captions of
    5 tokens with padding (id 0) at the end."""
    img_feat, img_rec = _normal(gen, 3, 10), _normal(gen, 3, 10)
    img_rec[:, :3] = img_feat[:, :3]
    hidden, weight, bias = _normal(gen, 3, 5, 8), _normal(gen, 9, 8, scale=0.5), _normal(gen, 9)
    targets = torch.tensor([[4, 2, 2, 0, 0], [1, 8, 3, 6, 0], [5, 0, 0, 0, 0]])
    d_img, d_txt = _normal(gen, 3, 1), _normal(gen, 3, 1)
    return [img_feat, img_rec, hidden, weight, bias, targets, d_img, d_txt]


def _logit_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    real, fake = _normal(gen, 7, 1, scale=3.0), _normal(gen, 5, 1, scale=3.0)
    real[4], fake[2] = real[1], fake[0]
    return [real, fake]


def _mmd_inputs(gen: torch.Generator) -> list[torch.Tensor]:
    z, prior = _normal(gen, 6, 4, scale=0.5), _normal(gen, 5, 4, scale=0.5)
    z[5] = z[1]
    return [z, prior]


def _count_at_least(impl: ModuleType, img, cap, cap_to_img):
    """Counts against each implementation's own thresholds (exact on these inputs)."""
    thresholds = impl.retrieval_thresholds(img, cap, cap_to_img)
    return impl.retrieval_count_at_least(img, cap, cap_to_img, *thresholds)


CASES: tuple[Case, ...] = (
    Case("mh_loss", _pair_inputs,
         lambda impl, i, t, ii, ti: impl.mh_loss(i, t, margin=MARGIN, img_ids=ii, txt_ids=ti)),
    Case("mh_loss[sum of hinges]", _pair_inputs,
         lambda impl, i, t, ii, ti: impl.mh_loss(i, t, margin=MARGIN, max_violation=False,
                                                 img_ids=ii, txt_ids=ti, reduction="none")),
    Case("mh_loss_from_scores", _score_inputs,
         lambda impl, s, ii, ti: impl.mh_loss_from_scores(s, margin=MARGIN, img_ids=ii,
                                                          txt_ids=ti)),
    Case("linear_cross_entropy", _token_inputs,
         lambda impl, h, w, b, t: impl.linear_cross_entropy(h, w, t, b, ignore_index=0)),
    Case("linear_cross_entropy[none]", _token_inputs,
         lambda impl, h, w, b, t: impl.linear_cross_entropy(h, w, t, b, ignore_index=0,
                                                            reduction="none")),
    Case("wae_loss", _wae_inputs,
         lambda impl, f, r, h, w, b, t, di, dt: impl.wae_loss(f, r, h, w, t, di, dt,
                                                              vocab_bias=b, batch_size=3)),
    Case("discriminator_loss", _logit_inputs, lambda impl, r, f: impl.discriminator_loss(r, f)),
    Case("mmd_imq", _mmd_inputs, lambda impl, z, p: impl.mmd_imq(z, p)),
    Case("retrieval_ranks", _gallery_inputs, lambda impl, *a: impl.retrieval_ranks(*a)),
    Case("retrieval_thresholds", _gallery_inputs, lambda impl, *a: impl.retrieval_thresholds(*a)),
    Case("retrieval_count_at_least", _gallery_inputs, _count_at_least),
    Case("topk_search", _gallery_inputs, lambda impl, img, cap, _: impl.topk_search(img, cap, 4)),
    Case("xattn_scores", _xattn_inputs,
         lambda impl, i, c, n, _: impl.xattn_scores(i, c, n)),
    Case("xattn_scores[i2t]", _xattn_inputs,
         lambda impl, i, c, n, _: impl.xattn_scores(i, c, n, direction="i2t", lambda_softmax=4.0,
                                                    agg="mean")),
    Case("xattn_ranks", _xattn_inputs, lambda impl, *a: impl.xattn_ranks(*a)),
    Case("xattn_region_grams", _xattn_inputs, lambda impl, i, *_: impl.xattn_region_grams(i)),
    Case("xattn_scores[region_grams]", _xattn_inputs,
         lambda impl, i, c, n, _: impl.xattn_scores(
             i, c, n, region_grams=impl.xattn_region_grams(i).detach())),
)  # fmt: skip


# ---- running ------------------------------------------------------------------------------------


def tensors_of(result: object) -> list[torch.Tensor]:
    """The tensors of an operator's result (a tensor, a tuple, or wae_loss's (total, terms))."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for value in result.values() for t in tensors_of(value)]
    return [t for value in result for t in tensors_of(value)]


def leaves(inputs: list[torch.Tensor], device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    return [
        t.to(device, dtype).requires_grad_() if t.is_floating_point() else t.to(device)
        for t in inputs
    ]


def _forward_backward(
    case: Case, impl: ModuleType, inputs: list[torch.Tensor], seed: int, which: list[bool] | None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[bool]]:
    """The case's outputs; the gradients of a random weighting of its differentiable outputs
    (``which``; by default those that require grad) with respect to its float inputs (``None``
    when there are none); and ``which``."""
    outputs = tensors_of(case.call(impl, *inputs))
    if which is None:
        which = [o.requires_grad for o in outputs]
    if len(which) != len(outputs):
        raise AssertionError(f"{len(outputs)} outputs, the operator gave {len(which)}")
    if not any(which):
        return outputs, None, which
    gen = torch.Generator().manual_seed(seed)
    objective = sum(
        (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
        for o, wanted in zip(outputs, which, strict=True)
        if wanted
    )
    floats = [t for t in inputs if t.is_floating_point()]
    grads = torch.autograd.grad(objective, floats, allow_unused=True)
    grads = [torch.zeros_like(f) if g is None else g for f, g in zip(floats, grads, strict=True)]
    return outputs, grads, which


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_case(case: Case, device: str, dtype: torch.dtype, *, impl: ModuleType = ops) -> Row:
    """Run ``case`` through ``impl`` (the compiled operators) on ``device`` in ``dtype``, and
    compare with the reference in float64 on the CPU on the same values."""
    row = Row(case.name, device, str(dtype).removeprefix("torch."))
    values = case.inputs(torch.Generator().manual_seed(SEED))
    inputs = leaves(values, device, dtype)
    exact = leaves([t.detach().cpu() for t in inputs], "cpu", torch.float64)
    reached = ReachedOperators()
    try:
        with kernels("compiled"), reached:
            _synchronize(device)
            start = time.perf_counter()
            got, got_grads, which = _forward_backward(case, impl, inputs, SEED, None)
            _synchronize(device)
            row.seconds = time.perf_counter() - start
        want, want_grads, _ = _forward_backward(case, reference, exact, SEED, which)
        row.forward = Comparison()
        for g, w in zip(got, want, strict=True):
            row.forward.add(g, w, dtype)
        if got_grads is not None:
            row.backward = Comparison()
            for g, w in zip(got_grads, want_grads, strict=True):
                row.backward.add(g, w, dtype)
    except Exception as error:  # a failing kernel is a row of the table, not a crash
        row.error = f"{type(error).__name__}: {error}".splitlines()[0]
    row.reached = reached.names
    return row


def available_devices() -> list[str]:
    """``cpu``, and ``cuda`` when torch sees a GPU (the current one)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run(devices: Iterable[str] | None = None, cases: Iterable[Case] = CASES) -> list[Row]:
    """Every case on every device in every dtype of :data:`DTYPES`, then one failing row per
    registered operator that no case reached."""
    with ReachedOperators():  # the first dispatch mode imports torch internals (seconds)
        torch.zeros(1).add(1)
    rows = [
        run_case(case, device, dtype)
        for device in (available_devices() if devices is None else devices)
        for dtype in DTYPES[torch.device(device).type]
        for case in cases
    ]
    reached = set().union(*(row.reached for row in rows))
    for name in sorted(set(operator_names()) - reached):
        rows.append(Row(name, "-", "-", error="no self-test case reaches this operator"))
    return rows
