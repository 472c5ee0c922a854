"""What is benchmarked: every provider computes the same RLSD loss (lam=1, the default options, token-mean)
from the same inputs (:func:`benchmarks.inputs.make_inputs`) and returns the gradients of hidden and
weight; only how the log-probs are taken differs.

- ``rlsd-<impl>``:      our fused :func:`rlsd_kernels.rlsd_loss` (student and teacher in one sweep)
- ``logprobs-<impl>``:  our :func:`rlsd_kernels.fused_linear_logprobs` as the log-prob primitive
                        (student with grad, teacher without), then the per-token RLSD math
- ``eager``:            ``rlsd_loss(impl="eager")``: materialised logits, log_softmax, gather
- ``liger-grpo``:       Liger-Kernel's ``LigerFusedLinearGRPOLoss`` plus a separate teacher log-prob
                        pass with Liger's own chunked log-prob function (it has no teacher input);
                        the teacher's credit enters as its per-token weight ``vllm_is_ratio``
- ``cce``, ``cce-torch_compile``: Apple's ``linear_cross_entropy(reduction="none")`` (= -log-prob)
                        as the primitive; ``cce`` is its Triton kernel, ``torch_compile`` the
                        fallback that materialises the logits
- ``trl-chunked-logprob``: TRL's ``ChunkedLogProbFunction`` (what ``GRPOTrainer`` uses for its
                        fused LM head) as the primitive
- ``verl-lce``, ``liger-sm90``, ``cce-exact``: veRL's ``linear_cross_entropy`` (Triton, log-prob +
                        entropy), Liger-Kernel's Hopper CuTe DSL fused scaled cross-entropy (per-token
                        NLL with a per-token upstream gradient) and cut-cross-entropy without gradient
                        filtering (``filter_eps=None``) as the primitive
- ``gemm-floor``:       the four GEMMs a fused RLSD step cannot avoid (student logits, teacher
                        logits, dL/dhidden, dL/dweight) on their own

The ``logprobs`` kernel (``python -m benchmarks --kernel logprobs``) times the primitive alone: per-token
log-probs and entropies of the student, forward and backward with a fixed per-token upstream gradient
(what any RL loss sends back); floor: its three GEMMs. Each of its providers states its contract: the
sum-reduced linear cross-entropies of QuACK and Liger (``quack-lce-sum``, ``liger-flce-sm90-sum``)
take a scalar upstream gradient and return no per-token log-probs, so they are a speed-of-light
reference beside the others, not a replacement for them.

A provider builds a :class:`Case` from the inputs: ``forward()`` is the training forward (inputs
require grad; the fused losses compute their gradients already here, as Liger's do), ``backward``
what remains. ``step(case, mode)`` turns it into a timed :class:`benchmarks.measure.Step`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import rlsd_kernels
from rlsd_kernels import fused_linear_logprobs, rlsd_loss
from rlsd_kernels.api import resolve_impl
from rlsd_kernels.math import rlsd_credit
from rlsd_kernels.ops import FUSED, usable
from rlsd_kernels.options import RLSDOptions
from rlsd_kernels.tokens import RLSDTokenLoss, token_inputs

from benchmarks.inputs import MiB, Shape
from benchmarks.measure import Step

MODES = ("forward", "backward", "full")
KERNELS = ("rlsd_loss", "logprobs")
FLOOR = {"rlsd_loss": "gemm-floor", "logprobs": "logprobs-gemm-floor"}  # ratio_to_floor's denominator
EAGER = {"rlsd_loss": "eager", "logprobs": "logprobs-eager"}            # ratio_to_eager's denominator
CFG = RLSDOptions(lam=1.0)  # defaults (docs/math.md): eps_w 0.2, eps_low 0.2, eps_high 0.28, no KL, no entropy
FLOOR_CHUNK_BYTES = 512 * MiB  # the floor's logits buffer: [N, V] up to this size, else row chunks
INSTALL_HINT = "pip install -r benchmarks/requirements.txt"


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

class Case:
    """One provider on one set of inputs."""

    def __init__(self, x, loss_fn):
        self.x, self.loss_fn = x, loss_fn

    def forward(self):
        return self.loss_fn(self.x)

    def backward(self, loss):
        loss.backward()

    def zero_grad(self):
        self.x["hidden"].grad = self.x["weight"].grad = None


def step(case: Case, mode: str) -> Step:
    if mode == "forward":
        return Step(run=lambda _: case.forward(), teardown=case.zero_grad)
    if mode == "backward":
        return Step(setup=case.forward, run=case.backward, teardown=case.zero_grad)
    if mode == "full":
        return Step(run=lambda _: case.backward(case.forward()), teardown=case.zero_grad)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _rlsd_from_primitive(logprobs):
    """RLSD loss from a log-prob primitive ``logprobs(hidden [n, H], weight, targets [n]) -> lp [n]``."""

    def loss_fn(x):
        h, th, w, y = x["hidden"], x["teacher_hidden"], x["weight"], x["targets"]
        H = h.shape[-1]
        lp = logprobs(h.reshape(-1, H), w, y.reshape(-1)).view(y.shape)
        with torch.no_grad():
            lp_t = logprobs(th.reshape(-1, H), w, y.reshape(-1)).view(y.shape)
        tok = token_inputs(x["mask"], x["advantages"], "token-mean", None, torch.float32, teacher_logprobs=lp_t,
                           old_logprobs=x["old_logprobs"])  # what rlsd_loss builds internally
        return RLSDTokenLoss(CFG)(lp.float(), None, tok).sum()

    return loss_fn


def _fused(impl):
    def loss_fn(x):
        loss, _ = rlsd_loss(x["hidden"], x["weight"], x["targets"], x["advantages"], x["mask"],
                            teacher_hidden=x["teacher_hidden"], old_logprobs=x["old_logprobs"], options=CFG,
                            impl=impl)
        return loss
    return loss_fn


def _our_logprobs(impl):
    return lambda h, w, y: fused_linear_logprobs(h, w, y, impl=impl)[0]


def _liger(compiled):
    from liger_kernel.chunked_loss.fused_linear_ppo import LigerFusedLinearPPOBase
    from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOLoss

    grpo = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=compiled, epsilon_low=CFG.eps_low,
                                    epsilon_high=CFG.eps_high, loss_type="dapo")

    def loss_fn(x):
        with torch.no_grad():  # the separate teacher pass; Liger's own chunked log-prob function
            lp_t = LigerFusedLinearPPOBase.chunk_forward(x["teacher_hidden"], x["weight"], x["targets"])
            # RLSD's credit as Liger's per-token weight; lp_old stands in for lp_S, which Liger
            # does not expose before its loss (equal on the first on-policy step)
            ones = torch.ones_like(lp_t)
            credit, _ = rlsd_credit(lp_t - x["old_logprobs"], x["advantages"].sign().unsqueeze(-1) * ones, CFG.lam,
                                    CFG.eps_w)  # sign(A) ((1 - lam) + lam c): |.| is the per-token weight
        loss, _ = grpo(x["hidden"], x["weight"], x["targets"], x["mask"], x["advantages"],
                       old_per_token_logps=x["old_logprobs"], vllm_is_ratio=credit.abs())
        return loss

    return loss_fn


def _cce(impl, filter_eps="high"):
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, y: -linear_cross_entropy(h, w, y, reduction="none", impl=impl, filter_eps=filter_eps)


def _verl_lce(entropy=False):
    """veRL's fused log-prob + entropy (``use_fused_kernels``): ``(logprobs [n], entropy [n])``."""
    from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy

    def f(h, w, y):
        lp, ent = linear_cross_entropy(h, w, y, 1.0, "none")
        return (lp, ent) if entropy else lp
    return f


def _liger_sm90(entropy=False):
    """Liger's Hopper fused scaled cross-entropy: per-token NLL (and entropy), per-token upstream grad."""
    from liger_kernel.ops.cutedsl.ops.fused_scaled_cross_entropy_sm90 import (
        LigerFusedScaledCrossEntropySM90Function as F)

    def f(h, w, y):
        if entropy:
            nll, ent = F.apply(h, w, y, 1.0, -100, 1, True)
            return -nll, ent
        return -F.apply(h, w, y)
    return f


def _trl():
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as chunk  # the vocabulary tile TRL uses

    return lambda h, w, y: ChunkedLogProbFunction.apply(h, w, None, y, 1.0, chunk, None, 1.0, ())[0]


def _logprobs_loss(logprobs, entropy=True):
    """The ``logprobs`` kernel: ``sum_t g_lp lp_t + g_ent H_t`` for a primitive returning per-token
    ``lp`` (and ``H`` when ``entropy``): the per-token upstream gradient of any RL loss."""

    def loss_fn(x):
        h, w, y = x["hidden"], x["weight"], x["targets"]
        H = h.shape[-1]
        out = logprobs(h.reshape(-1, H), w, y.reshape(-1))
        lp, ent = out if entropy else (out, None)
        loss = (lp.float().view(y.shape) * x["grad_logprobs"]).sum()
        if ent is not None:
            loss = loss + (ent.float().view(y.shape) * x["grad_entropy"]).sum()
        return loss

    return loss_fn


def _eager_logprobs(h, w, y):
    """Materialised logits (float32, or float64 for float64 inputs), log_softmax, gather, entropy:
    what a trainer writes by hand."""
    z = torch.mm(h, w.t())
    logp = torch.log_softmax(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _sum_reduced(ce):
    """A sum-reduced linear cross-entropy ``ce(h [n, H], w, y) -> scalar``: a different contract."""
    def loss_fn(x):
        h = x["hidden"]
        return ce(h.reshape(-1, h.shape[-1]), x["weight"], x["targets"].reshape(-1))
    return loss_fn


def _quack_sum():
    from quack.linear_cross_entropy import chunked_linear_cross_entropy

    return lambda h, w, y: chunked_linear_cross_entropy(h, w, y, reduction="sum")


def _liger_flce_sum():
    from liger_kernel.ops.cutedsl.ops.fused_linear_cross_entropy_sm90 import liger_fused_linear_cross_entropy_sm90

    return lambda h, w, y: liger_fused_linear_cross_entropy_sm90(h, w, y, reduction="sum")


class FloorCase(Case):
    """The four GEMMs, into preallocated outputs; [rows, V] logits chunks when [N, V] is too big."""

    def __init__(self, x):
        self.x = x
        self.h = x["hidden"].detach().reshape(-1, x["hidden"].shape[-1])
        self.ht = x["teacher_hidden"].reshape(-1, self.h.shape[1])
        self.w = x["weight"].detach()
        N, V = self.h.shape[0], self.w.shape[0]
        self.rows = max(1, min(N, FLOOR_CHUNK_BYTES // (V * self.h.element_size())))
        self.logits = torch.empty(self.rows, V, dtype=self.h.dtype, device=self.h.device)
        self.dh = torch.empty_like(self.h)
        self.dw = torch.empty_like(self.w)

    def _chunks(self):
        for r0 in range(0, self.h.shape[0], self.rows):
            r1 = min(r0 + self.rows, self.h.shape[0])
            yield r0, r1, self.logits[: r1 - r0]

    def forward(self):
        for r0, r1, z in self._chunks():
            torch.mm(self.h[r0:r1], self.w.t(), out=z)   # student logits
            torch.mm(self.ht[r0:r1], self.w.t(), out=z)  # teacher logits

    def backward(self, _):
        for r0, r1, z in self._chunks():
            torch.mm(z, self.w, out=self.dh[r0:r1])                                 # dL/dhidden
            torch.addmm(self.dw, z.t(), self.h[r0:r1], beta=float(r0 > 0), out=self.dw)  # dL/dweight

    def zero_grad(self):
        pass


class LogprobsFloorCase(FloorCase):
    """The primitive's three GEMMs: student logits; dL/dhidden and dL/dweight."""

    def forward(self):
        for r0, r1, z in self._chunks():
            torch.mm(self.h[r0:r1], self.w.t(), out=z)


def gemm_floor_flops(N, H, V, kernel="rlsd_loss"):
    return (4 if kernel == "rlsd_loss" else 3) * 2 * N * H * V


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

def _version(dist):
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return ""


# Peers that benchmarks/requirements.txt cannot hold (their pins or their hardware), and how to get them.
HINTS = {"verl": "pip install verl==0.9.1 in an environment of its own: it pins transformers<5.11",
         "cutlass": "pip install nvidia-cutlass-dsl==4.8.1: Liger's CuTe DSL kernels need it, and a CUDA GPU",
         "quack": "pip install quack-kernels: CuTe DSL, a CUDA GPU"}


def _needs(*modules):
    """Reason string if a module is missing, else None."""
    import importlib.util

    for m in modules:
        if importlib.util.find_spec(m) is None:
            return f"{m} not installed ({HINTS.get(m, INSTALL_HINT)})"
    return None


def _fused_unavailable(impl):
    def reason(device):
        if impl.startswith("triton") and device.type != "cuda":
            return ("needs a CUDA GPU (on the CPU Triton runs only in its interpreter, "
                    "TRITON_INTERPRET=1: a correctness tool at ~ms per tile, not a benchmark)")
        if impl == "cpp" and device.type != "cpu":
            return "CPU-only backend (C++/OpenMP epilogues)"
        if not usable(impl):
            if impl == "cpp":
                from rlsd_kernels.ops import cpp
                return f"C++ extension unavailable: {cpp.unavailable_reason()}"
            return "backend unavailable here"
        return None
    return reason


def _cce_unavailable(impl):
    def reason(device):
        missing = _needs("cut_cross_entropy")
        if missing:
            return missing
        if impl == "cce" and device.type != "cuda":
            return "its Triton kernel needs a CUDA GPU (on the CPU only impl='torch_compile' runs)"
        return None
    return reason


def _hopper_cutedsl(device):
    """Why a CuTe DSL SM90 kernel cannot run here, or None."""
    missing = _needs("liger_kernel", "cutlass")
    if missing:
        return missing
    if device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return "needs a Hopper GPU (compute capability 9.0)"
    return None


def _quack_unavailable(device):
    missing = _needs("quack")
    if missing:
        return missing
    return None if device.type == "cuda" else "needs a CUDA GPU (CuTe DSL)"


def _verl_unavailable(device):
    missing = _needs("verl")
    if missing:
        return missing
    return None if device.type == "cuda" else "its Triton kernels need a CUDA GPU"


def _always(device):
    return None


@dataclass(frozen=True)
class Provider:
    name: str
    build: Callable[[dict], Case]                           # inputs -> Case
    unavailable: Callable[[torch.device], Optional[str]]    # why it can't run on this device, or None
    extra_bytes: Callable[[Shape], int]                     # estimated peak above inputs, fwd+bwd
    version: Callable[[], str] = field(default=lambda: f"rlsd_kernels {rlsd_kernels.__version__}")
    note: str = ""                                          # what differs from the others
    kernel: str = "rlsd_loss"                               # which of KERNELS it computes
    contract: str = ""                                      # what it returns and takes back, if not the kernel's own


def _chunked_bytes(s: Shape):
    """A chunked provider: gradients (and a float32 dW accumulator) plus chunk buffers."""
    return 2 * s.grad_bytes() + 256 * MiB


def _eager_bytes(s: Shape):
    """``rlsd_loss(impl="eager")`` fwd+bwd holds up to three [N, V] float32 buffers at once: the
    student's saved log_softmax and, in the forward, the teacher's logits and log_softmax; in the
    backward the gradient of the log-softmax, of its input and the saved output (the estimate is
    checked against the measured peak in tests/test_benchmarks.py)."""
    return 3 * s.logits_bytes() + s.grad_bytes()


def _cce_compile_bytes(s: Shape):
    """torch.compile's cross-entropy saves the [N, V] logits and builds their gradient (measured:
    2.0 [N, V] buffers + gradients at N=2048 and 8192, H=512, V=32768)."""
    return 2 * s.logits_bytes() + s.grad_bytes() + 64 * MiB


def _trl_bytes(s: Shape):
    """TRL's CPU fallback folds [4096, 32768] tiles with torch ops: about nine tile-sized temporaries
    (measured: 2.2 GiB at N=2048, 4.2 GiB at N=8192, H=512, V=32768), plus float32 gradients."""
    return 9 * min(s.N, 4096) * min(s.V, 32768) * 4 + 2 * s.grad_bytes()


def _floor_bytes(s: Shape):
    return min(s.logits_bytes(), max(FLOOR_CHUNK_BYTES, s.V * 4)) + s.grad_bytes()


def registry() -> dict:
    """All providers, in table order."""
    out = [Provider("gemm-floor", FloorCase, _always, _floor_bytes, note="the four GEMMs alone")]
    out.append(Provider("eager", lambda x: Case(x, _fused("eager")), _always, _eager_bytes,
                        note="materialises [N, V] logits"))
    for impl in FUSED:
        out.append(Provider(f"rlsd-{impl}", lambda x, i=impl: Case(x, _fused(i)), _fused_unavailable(impl),
                            _chunked_bytes))
    for impl in FUSED:
        out.append(Provider(f"logprobs-{impl}", lambda x, i=impl: Case(x, _rlsd_from_primitive(_our_logprobs(i))),
                            _fused_unavailable(impl), _chunked_bytes,
                            note="fused_linear_logprobs x2 + per-token math"))
    for compiled in (False, True):
        out.append(Provider("liger-grpo" + ("-compiled" if compiled else ""),
                            lambda x, c=compiled: Case(x, _liger(c)),
                            lambda d: _needs("liger_kernel"), _chunked_bytes, lambda: _version("liger-kernel"),
                            note=f"GRPO loss + separate teacher pass; compiled={compiled}"))
    for impl in ("cce", "torch_compile"):
        out.append(Provider("cce" if impl == "cce" else f"cce-{impl}",
                            lambda x, i=impl: Case(x, _rlsd_from_primitive(_cce(i))), _cce_unavailable(impl),
                            _chunked_bytes if impl == "cce" else _cce_compile_bytes,
                            lambda: _version("cut-cross-entropy"),
                            note="linear_cross_entropy x2 + per-token math" +
                                 ("" if impl == "cce" else "; materialises [N, V] logits")))
    out.append(Provider("trl-chunked-logprob", lambda x: Case(x, _rlsd_from_primitive(_trl())),
                        lambda d: _needs("trl"), _trl_bytes, lambda: _version("trl"),
                        note="ChunkedLogProbFunction x2 + per-token math"))
    out.append(Provider("cce-exact", lambda x: Case(x, _rlsd_from_primitive(_cce("cce", None))),
                        _cce_unavailable("cce"), _chunked_bytes, lambda: _version("cut-cross-entropy"),
                        note="linear_cross_entropy(filter_eps=None) x2 + per-token math"))
    out.append(Provider("verl-lce", lambda x: Case(x, _rlsd_from_primitive(_verl_lce())), _verl_unavailable,
                        _chunked_bytes, lambda: _version("verl"),
                        note="verl.utils.kernel.linear_cross_entropy x2 + per-token math"))
    out.append(Provider("liger-sm90", lambda x: Case(x, _rlsd_from_primitive(_liger_sm90())), _hopper_cutedsl,
                        _chunked_bytes, lambda: " ".join(filter(None, (_version("liger-kernel"),
                                                                       _version("nvidia-cutlass-dsl")))),
                        note="LigerFusedScaledCrossEntropySM90Function x2 + per-token math"))
    out += _logprobs_providers()
    return {p.name: p for p in out}


PER_TOKEN = "per-token log-prob + entropy, per-token upstream gradient"


def _logprobs_providers():
    """The ``logprobs`` kernel's providers (see the module docstring)."""
    lp = dict(kernel="logprobs")
    cutlass = lambda: " ".join(filter(None, (_version("liger-kernel"), _version("nvidia-cutlass-dsl"))))  # noqa: E731
    out = [Provider("logprobs-gemm-floor", LogprobsFloorCase, _always, _floor_bytes,
                    note="the three GEMMs alone", **lp),
           Provider("logprobs-eager", lambda x: Case(x, _logprobs_loss(_eager_logprobs)), _always,
                    lambda s: 3 * s.logits_bytes() + s.grad_bytes(), note="materialises [N, V] logits",
                    contract=PER_TOKEN, **lp)]
    for impl in FUSED:
        out.append(Provider(f"fused_linear_logprobs-{impl}",
                            lambda x, i=impl: Case(x, _logprobs_loss(
                                lambda h, w, y: fused_linear_logprobs(h, w, y, return_entropy=True, impl=i))),
                            _fused_unavailable(impl), _chunked_bytes, contract=PER_TOKEN, **lp))
    out += [
        Provider("verl-lce-logprobs", lambda x: Case(x, _logprobs_loss(_verl_lce(entropy=True))), _verl_unavailable,
                 _chunked_bytes, lambda: _version("verl"), contract=PER_TOKEN, **lp),
        Provider("liger-sm90-logprobs", lambda x: Case(x, _logprobs_loss(_liger_sm90(entropy=True))),
                 _hopper_cutedsl, _chunked_bytes, cutlass, contract=PER_TOKEN, **lp),
        Provider("cce-exact-logprobs", lambda x: Case(x, _logprobs_loss(_cce("cce", None), entropy=False)),
                 _cce_unavailable("cce"), _chunked_bytes, lambda: _version("cut-cross-entropy"),
                 contract="per-token log-prob only (no entropy), per-token upstream gradient", **lp),
        Provider("quack-lce-sum", lambda x: Case(x, _sum_reduced(_quack_sum())), _quack_unavailable,
                 _chunked_bytes, lambda: _version("quack-kernels"),
                 contract="sum-reduced cross-entropy: no per-token outputs, scalar upstream gradient "
                          "(speed-of-light reference, a different contract)", **lp),
        Provider("liger-flce-sm90-sum", lambda x: Case(x, _sum_reduced(_liger_flce_sum())), _hopper_cutedsl,
                 _chunked_bytes, cutlass,
                 contract="sum-reduced cross-entropy: no per-token outputs, scalar upstream gradient "
                          "(speed-of-light reference, a different contract)", **lp),
    ]
    return out


def default_selection(device: torch.device, kernel: str = "rlsd_loss") -> list:
    """rlsd_loss: every rlsd impl, the default impl's fused_linear_logprobs, eager, the peers, the floor;
    logprobs: every provider of that kernel."""
    default = resolve_impl("auto", device)
    skip = {f"logprobs-{i}" for i in FUSED if i != default} | {"liger-grpo-compiled"}
    if device.type == "cuda":
        skip.add("cce-torch_compile")
    return [name for name, p in registry().items() if p.kernel == kernel and name not in skip]


def default_provider(device: torch.device, kernel: str = "rlsd_loss") -> str:
    impl = resolve_impl("auto", device)
    return f"rlsd-{impl}" if kernel == "rlsd_loss" else f"fused_linear_logprobs-{impl}"


def providers(impls):
    """``{name: inputs -> fwd+bwd closure}`` for our impls, eager and the floor (``make demo``)."""
    reg = registry()

    def closure(p):
        def make(x):
            s = step(p.build(x), "full")
            return lambda: s()
        return make

    names = [f"rlsd-{i}" for i in impls if i != "eager"] + ["eager", "gemm-floor"]
    return {name: closure(reg[name]) for name in names}
