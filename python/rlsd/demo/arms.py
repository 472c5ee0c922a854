"""The run settings shared by ``rlsd demo`` and ``rlsd study``: one base (16 prompts x 8 responses per
rollout batch, PPO mini-batches of 4 prompts, one thread) and the arms compared, each a config overlay.

    grpo                 lam = 0
    opsd                 on-policy self-distillation (worked trace in context), no reward, lr 1e-5
    rlsd-authors-answer  the authors' settings (their example script): lam 0.5 decaying linearly to 0
    rlsd-authors-trace     over 60 steps (no warmup), a frozen copy of the start re-synced every 20
                           steps, eps_w 0.2; the answer / the worked trace as privileged context
    rlsd-live-answer     lam = 1, live teacher (the current weights)
    rlsd-live-trace
extra (not in the default study):
    opsd-lr5e-5          OPSD at GRPO's learning rate
    rlsd-decay50-answer  the settings of the study recorded before the authors' schedule was
    rlsd-decay50-trace     reachable: lam 0.5 -> 0 over 50 steps, re-synced every 10 steps
    rlsd-live-trace-eps0.5, -eps0.9   a wider credit clip eps_w
"""

from __future__ import annotations

import os

from .task import ANSWER_PATTERN, TEMPLATES

RL = {"rollout": {"n": 8, "max_new_tokens": 32, "temperature": 1.0},
      "train": {"prompts_per_step": 16, "micro_batch_size": 128, "ppo_mini_batch_size": 4, "lr": 5e-5,
                "grad_clip": 1.0, "threads": 1, "progress": False}}
AUTHORS = {"loss": {"lam": 0.5, "eps_w": 0.2}, "lam_schedule": "warmup-decay", "lam_warmup_steps": 0,
           "lam_decay_steps": 60}
AUTHORS_SYNC = 20
DECAY50 = {"loss": {"lam": 0.5}, "lam_schedule": "linear", "lam_end": 0.0, "lam_decay_steps": 50}


def merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _teacher(source: str, sync: str = "live", every: int = 10) -> dict:
    return {"source": source, "template": TEMPLATES[source], "sync": sync, "sync_every": every}


ARMS = {
    "grpo": {"algo": {"name": "grpo"}},
    "opsd": {"algo": {"name": "opsd", "dynamic_sampling": False}, "train": {"lr": 1e-5},
             "teacher": _teacher("solution")},
    "rlsd-authors-answer": {"algo": {"name": "rlsd", **AUTHORS}, "teacher": _teacher("answer", "frozen", AUTHORS_SYNC)},
    "rlsd-authors-trace": {"algo": {"name": "rlsd", **AUTHORS}, "teacher": _teacher("solution", "frozen", AUTHORS_SYNC)},
    "rlsd-live-answer": {"algo": {"name": "rlsd", "loss": {"lam": 1.0}}, "teacher": _teacher("answer")},
    "rlsd-live-trace": {"algo": {"name": "rlsd", "loss": {"lam": 1.0}}, "teacher": _teacher("solution")},
}
STUDY_ARMS = tuple(ARMS)
ARMS.update({
    "opsd-lr5e-5": merge(ARMS["opsd"], {"train": {"lr": 5e-5}}),
    "rlsd-decay50-answer": {"algo": {"name": "rlsd", **DECAY50}, "teacher": _teacher("answer", "frozen")},
    "rlsd-decay50-trace": {"algo": {"name": "rlsd", **DECAY50}, "teacher": _teacher("solution", "frozen")},
})
ARMS.update({f"rlsd-live-trace-eps{eps}": {"algo": {"name": "rlsd", "loss": {"lam": 1.0, "eps_w": eps}},
                                           "teacher": _teacher("solution")} for eps in (0.5, 0.9)})


def arm_config(arm: str, seed: int, model_dir: str, data_dir: str, run_dir: str, steps: int, eval_every: int,
               engine: str, extra: dict = None) -> dict:
    """The ``rlsd train`` config of one run of ``arm`` (the demo and the study both build theirs here)."""
    base = merge(RL, {
        "model": {"path": model_dir},
        "data": {"train": os.path.join(data_dir, "train.jsonl"), "eval": os.path.join(data_dir, "eval.jsonl")},
        "verifier": {"name": "exact", "options": {"pattern": ANSWER_PATTERN}},
        "rollout": {"engine": engine},
        "train": {"steps": steps, "seed": seed, "eval_every": eval_every, "output_dir": run_dir,
                  "checkpoint_every": 0},
    })
    return merge(merge(base, ARMS[arm]), extra or {})
