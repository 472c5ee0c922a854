"""The self-teacher: the same network, prompted with privileged context, run without gradient.

``sync='live'`` uses the current weights; ``sync='frozen'`` a copy refreshed every ``sync_every``
optimizer steps (the authors' K = 20). The teacher's prompt is the library's privileged prompt
(``rlsd_kernels.privileged``) of the example's prompt and its reference: the final answer, a
verified worked trace (``solution``), or an attached ``document``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from rlsd_kernels.privileged import privileged_prompt

from .batch import response_hidden
from .config import TeacherConfig
from .model import lm_head


@dataclass(frozen=True)
class TeacherInputs:
    """What the loss reads of the teacher for one micro-batch, at most one of: its last hidden states
    [B, T, H] at the response positions (live: the loss applies the student's LM head to them in the
    same sweep) or its log-probs [B, T] of the response tokens (frozen: under its own head).
    ``TeacherInputs()``: no teacher."""

    hidden: Optional[torch.Tensor] = None
    logprobs: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.hidden is not None and self.logprobs is not None:
            raise ValueError("TeacherInputs takes the teacher's hidden states or its log-probs, not both")


def privileged_reference(example, source: str) -> str:
    ref = {"answer": example.answer, "solution": example.solution, "document": example.document}[source]
    if ref is None:
        raise ValueError(f"example has no {source!r} for the privileged context: {example.prompt[:80]!r}")
    return str(ref)


def teacher_prompt(example, cfg: TeacherConfig) -> str:
    """The teacher's prompt of ``example``: ``cfg.template`` filled with its prompt and its ``cfg.source``."""
    return privileged_prompt(example.prompt, privileged_reference(example, cfg.source), cfg.template)


class Teacher:
    def __init__(self, model, cfg: TeacherConfig):
        self.cfg = cfg
        self.model = model
        self.frozen = None
        if cfg.sync == "frozen":
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def live(self) -> bool:
        return self.frozen is None

    def maybe_sync(self, step: int) -> None:
        """Refresh the frozen copy from the live weights every ``sync_every`` steps."""
        if self.frozen is not None and step > 0 and step % self.cfg.sync_every == 0:
            self.frozen.load_state_dict(self.model.state_dict())

    @torch.no_grad()
    def hidden(self, contexts: list, responses: list, pad_id: int, device=None):
        """Teacher hidden states [B, T, H] at the response positions, and its LM head (weight, bias).
        The decoder body only: no [T, V] logits; the fused loss applies the head chunk by chunk. The
        trainer calls it per micro-batch, so ``train.micro_batch_tokens`` bounds this pass too."""
        net = self.model if self.frozen is None else self.frozen
        hidden, _, _ = response_hidden(net, contexts, responses, pad_id, device)
        return hidden, lm_head(net)

    def state_dict(self):
        return None if self.frozen is None else self.frozen.state_dict()

    def load_state_dict(self, state) -> None:
        if self.frozen is not None and state is not None:
            self.frozen.load_state_dict(state)
