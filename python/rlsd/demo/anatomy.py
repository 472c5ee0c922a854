"""Where RLSD's credit clip acts: the share of credited tokens whose weight w = exp(sign(A) delta)
falls outside [1 - eps_w, 1 + eps_w], split by what is counted, eps_w, the teacher's context and
the model, on one batch of rollouts (no training).

    delta_t = lp_T(t) - lp_S(t)    teacher = the same model with the answer or the worked trace in context
"""

from __future__ import annotations

import torch

from rlsd_kernels import fused_linear_logprobs

from ..advantages import group_advantages
from ..batch import response_hidden
from ..model import lm_head
from ..rollout.hf import HFEngine
from ..verifiers import make_verifier
from .task import ANSWER_PATTERN, TEMPLATES

EPS_W = (0.1, 0.2, 0.3, 0.5)


@torch.no_grad()
def logprobs(model, contexts: list, responses: list, pad_id: int):
    hidden, targets, mask = response_hidden(model, contexts, responses, pad_id)
    lp, _ = fused_linear_logprobs(hidden, lm_head(model)[0], targets)
    return lp, mask.bool()


def first_error(response: str, solution: str) -> int:
    """Index of the first character where ``response`` departs from the worked ``solution``."""
    return next((i for i, (a, b) in enumerate(zip(response, solution)) if a != b), min(len(response), len(solution)))


def clip_fraction(w, counted, eps: float) -> dict:
    n = counted.sum().clamp(min=1)
    low, high = (w < 1 - eps) & counted, (w > 1 + eps) & counted
    return {"low": (low.sum() / n).item(), "high": (high.sum() / n).item(),
            "total": ((low | high).sum() / n).item(), "tokens": int(counted.sum())}


def delta_stats(d) -> dict:
    """Mean, std and |delta| quantiles of the credited tokens (empty when no group had mixed rewards)."""
    if d.numel() < 2:
        return {}
    return {"delta_mean": d.mean().item(), "delta_std": d.std().item(),
            "abs_delta_quantiles": {str(q): torch.quantile(d.abs(), q).item() for q in (0.5, 0.9, 0.95)}}


def anatomy(model, tok, examples: list, n: int = 8, seed: int = 0, max_new_tokens: int = 32) -> dict:
    """Clip fractions of one batch of ``len(examples)`` prompts x ``n`` samples at temperature 1."""
    engine = HFEngine(model, tok)
    verifier = make_verifier("exact", pattern=ANSWER_PATTERN)
    groups = engine.generate([tok(e.prompt)["input_ids"] for e in examples], n, max_new_tokens, 1.0, seed=seed)
    rewards = torch.tensor([[verifier(x.text, e).reward for x in g] for g, e in zip(groups, examples)])
    adv = group_advantages(rewards).flatten()
    flat = [(x, e) for g, e in zip(groups, examples) for x in g]
    responses = [x.response_ids for x, _ in flat]
    lp_s, mask = logprobs(model, [x.prompt_ids for x, _ in flat], responses, tok.pad_token_id)
    T = mask.shape[1]
    pos = torch.arange(T)[None, :]
    err = torch.tensor([first_error(x.text, e.solution) for x, e in flat])[:, None]
    correct = (rewards.flatten() >= 1)[:, None]
    credited = mask & (adv != 0)[:, None]
    eos = mask & (pos == mask.sum(1, keepdim=True) - 1)
    out = {"reward_mean": rewards.mean().item(), "credited_share": (credited.sum() / mask.sum()).item()}
    for source in ("answer", "solution"):
        ctx = [tok(TEMPLATES[source].format(reference=getattr(e, source), prompt=e.prompt))["input_ids"]
               for _, e in flat]
        lp_t, _ = logprobs(model, ctx, responses, tok.pad_token_id)
        delta = lp_t - lp_s
        w = torch.exp(torch.sign(adv)[:, None] * delta)
        subsets = {"credited (A != 0): the metric": credited, "all response tokens (A = 0 counts as unclipped)": mask,
                   "credited, correct responses": credited & correct, "credited, wrong responses": credited & ~correct,
                   "credited, wrong, before the first error": credited & ~correct & (pos < err),
                   "credited, wrong, at the first error": credited & ~correct & (pos == err),
                   "credited, wrong, after the first error": credited & ~correct & (pos > err),
                   "credited, end-of-sequence token": credited & eos}
        out[source] = {
            "by_tokens": {name: clip_fraction(w, m, 0.2) for name, m in subsets.items()},
            "by_eps_w": {str(eps): clip_fraction(w, credited, eps)["total"] for eps in EPS_W},
            **delta_stats(delta[credited]),
        }
    return out


def anatomy_report(models: dict, examples: list, n: int = 8, max_new_tokens: int = 32) -> dict:
    """``anatomy`` of each ``{label: model directory}`` on the same prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = {}
    for label, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out[label] = anatomy(model, AutoTokenizer.from_pretrained(path), examples, n, max_new_tokens=max_new_tokens)
    return out

