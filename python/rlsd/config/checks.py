"""Checks of a :class:`~rlsd.config.schema.Config`: types, then values, one message per bad key."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import string
import typing

import torch

from rlsd_kernels.math import LOSS_AGGS
from rlsd_kernels.ops import IMPLS

from ..algorithms import ALGORITHMS


class ConfigError(ValueError):
    """A config that cannot run; the message names the key (and the file or ``--set`` it came from)."""


def _suggest(name, choices, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _show(value) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a mapping"}


def _unwrap(hint):
    """(the type inside Optional[...], whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _type_problems(obj, where: str) -> list:
    """Type errors of the dataclass ``obj`` and its sections; ints in float fields become floats."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = f"{where}.{f.name}".lstrip("."), getattr(obj, f.name)
        kind, optional = _unwrap(hints[f.name])
        kind = typing.get_origin(kind) or kind  # list[int] -> list
        if value is None and optional:
            continue
        if dataclasses.is_dataclass(kind):
            if isinstance(value, kind):
                problems += _type_problems(value, key)
            else:
                problems.append(f"{key}: expected a mapping{' or null' if optional else ''}, got {_show(value)}")
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            problems.append(f"{key}: expected {_KINDS.get(kind, kind)}, got {_show(value)}")
    return problems


def _template_problems(key: str, template: str, required: tuple) -> list:
    """A ``str.format`` template must parse and use exactly the named fields ``required``."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return [f"{key}: not a valid format string ({exc}); write literal braces as {{{{ and }}}}"]
    unknown, missing = fields - set(required), set(required) - fields
    if unknown or missing:
        found = [f"unknown {sorted(unknown)}"] * bool(unknown) + [f"missing {sorted(missing)}"] * bool(missing)
        return [f"{key} must use the fields {{{'}, {'.join(required)}}}: {', '.join(found)}"]
    return []


def _verifier_problems(v) -> list:
    from ..verifiers import REGISTRY  # the registry fills itself on import; config stays importable alone
    if v.name not in REGISTRY:
        return [f"verifier.name must be one of {sorted(REGISTRY)}, got {v.name!r}{_suggest(v.name, REGISTRY)}"]
    params = list(inspect.signature(REGISTRY[v.name]).parameters)[2:]
    try:
        inspect.signature(REGISTRY[v.name]).bind("", None, **v.options)
    except TypeError as exc:
        return [f"verifier.options: {exc} (verifier {v.name!r} takes {params})"]
    return []


def _device_ok(name: str) -> bool:
    try:
        return name == "auto" or torch.device(name).type in ("cpu", "cuda")
    except RuntimeError:
        return False


def _value_problems(cfg) -> list:
    """Values out of range and unknown names, one message per key."""
    m, d, r, te, a, t = cfg.model, cfg.data, cfg.rollout, cfg.teacher, cfg.algo, cfg.train
    choices = [
        ("model.dtype", m.dtype, ("auto", "float32", "bfloat16", "float16")),
        ("rollout.engine", r.engine, ("hf", "vllm")),
        ("teacher.sync", te.sync, ("live", "frozen")),
        ("teacher.source", te.source, ("answer", "solution", "document")),
        ("algo.name", a.name, tuple(ALGORITHMS)),
        ("algo.advantage", a.advantage, ("grpo", "drgrpo")),
        ("algo.lam_schedule", a.lam_schedule, ("constant", "linear", "warmup-decay")),
        ("algo.credit_span", a.credit_span, ("all", "thought")),
        ("algo.loss_agg", a.loss_agg, LOSS_AGGS),
        ("algo.opsd_form", a.opsd_form, ("sampled", "jsd")),
        ("train.impl", t.impl, ("auto",) + tuple(IMPLS)),
    ]
    problems = [f"{key} must be one of {list(allowed)}, got {value!r}{_suggest(value, allowed)}"
                for key, value, allowed in choices if value not in allowed]
    ranges = [
        ("data.curriculum_threshold", d.curriculum_threshold, 0 <= d.curriculum_threshold <= 1, "in [0, 1]"),
        ("data.curriculum_window", d.curriculum_window, d.curriculum_window >= 1, ">= 1"),
        ("rollout.n", r.n, r.n >= 1, ">= 1"),
        ("rollout.max_new_tokens", r.max_new_tokens, r.max_new_tokens >= 1, ">= 1"),
        ("rollout.temperature", r.temperature, math.isfinite(r.temperature) and r.temperature > 0, "a finite number > 0"),
        ("teacher.sync_every", te.sync_every, te.sync_every >= 1, ">= 1"),
        ("algo.lam_end", a.lam_end, 0 <= a.lam_end <= 1, "in [0, 1]"),
        ("algo.lam_decay_steps", a.lam_decay_steps, a.lam_decay_steps >= (a.lam_schedule != "warmup-decay"),
         ">= 0 (0: no decay)" if a.lam_schedule == "warmup-decay" else ">= 1"),
        ("algo.lam_warmup_steps", a.lam_warmup_steps, a.lam_warmup_steps >= 0, ">= 0 (0: no warmup)"),
        ("algo.opsd_beta", a.opsd_beta, 0 <= a.opsd_beta <= 1, "in [0, 1]"),
        ("algo.opsd_coef", a.opsd_coef, math.isfinite(a.opsd_coef) and a.opsd_coef >= 0, "a finite number >= 0"),
        ("train.steps", t.steps, t.steps >= 1, ">= 1"),
        ("verifier.workers", cfg.verifier.workers, cfg.verifier.workers >= 0, ">= 0 (0: 2 x cores)"),
        ("train.prompts_per_step", t.prompts_per_step, t.prompts_per_step >= 1, ">= 1"),
        ("train.micro_batch_size", t.micro_batch_size, t.micro_batch_size >= 1, ">= 1"),
        ("train.micro_batch_tokens", t.micro_batch_tokens, t.micro_batch_tokens >= 0, ">= 0 (0: off)"),
        ("train.ppo_mini_batch_size", t.ppo_mini_batch_size, t.ppo_mini_batch_size >= 0, ">= 0 (0: the whole batch)"),
        ("train.ppo_epochs", t.ppo_epochs, t.ppo_epochs >= 1, ">= 1"),
        ("train.lr", t.lr, math.isfinite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("train.weight_decay", t.weight_decay, math.isfinite(t.weight_decay) and t.weight_decay >= 0, "a finite number >= 0"),
        ("train.betas", t.betas, len(t.betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in t.betas),
         "two numbers in [0, 1)"),
        ("train.grad_clip", t.grad_clip, math.isfinite(t.grad_clip) and t.grad_clip >= 0, "a finite number >= 0 (0: off)"),
        ("train.seed", t.seed, 0 <= t.seed < 2 ** 32, "in [0, 2^32)"),
        ("train.threads", t.threads, t.threads >= 0, ">= 0 (0: torch's default)"),
        ("train.device", t.device, _device_ok(t.device), "auto, cpu, cuda or cuda:N"),
        ("train.output_dir", t.output_dir, t.output_dir.strip() != "", "a directory name"),
        ("train.eval_every", t.eval_every, t.eval_every >= 0, ">= 0"),
        ("train.eval_size", t.eval_size, t.eval_size >= 0, ">= 0"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 0, ">= 0"),
    ]
    if m.lora is not None:
        lora = m.lora
        ranges += [
            ("model.lora.r", lora.r, lora.r >= 1, ">= 1"),
            ("model.lora.alpha", lora.alpha, lora.alpha > 0, "> 0"),
            ("model.lora.dropout", lora.dropout, 0 <= lora.dropout < 1, "in [0, 1)"),
            ("model.lora.target_modules", lora.target_modules,
             bool(lora.target_modules) and all(isinstance(x, str) for x in lora.target_modules),
             "a non-empty list of module names"),
        ]
    problems += [f"{key} must be {what}, got {value!r}" for key, value, ok, what in ranges if not ok]
    problems += _template_problems("data.prompt_template", d.prompt_template, ("prompt",))
    problems += _template_problems("teacher.template", te.template, ("prompt", "reference"))
    problems += _verifier_problems(cfg.verifier)
    if a.credit_span == "thought" and not a.answer_marker:
        problems.append("algo.credit_span 'thought' needs algo.answer_marker: the text that starts the final answer")
    if a.name in ALGORITHMS and a.algorithm.distill and a.opsd_form == "jsd" and te.sync != "live":
        problems.append("algo.opsd_form 'jsd' compares full distributions under one LM head: "
                        "it needs teacher.sync 'live'")
    return problems



def validate(cfg):
    """``cfg`` itself, or :class:`ConfigError` naming each bad key (types first, then values)."""
    problems = _type_problems(cfg, "")
    if not problems:
        problems = _value_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def environment_problems(cfg) -> list:
    """Files and directories the config names that do not exist; a verifier that cannot run here."""
    from ..verifiers import CHECKS
    files = [("data.train", cfg.data.train, os.path.isfile, "file"), ("data.eval", cfg.data.eval, os.path.isfile, "file"),
             ("model.path", cfg.model.path, os.path.isdir, "directory")]
    problems = [f"{key}: no such {what}: {value!r}" for key, value, exists, what in files if value and not exists(value)]
    try:
        CHECKS.get(cfg.verifier.name, lambda **_: None)(**cfg.verifier.options)
    except Exception as exc:  # each check raises its own kind; all mean "cannot run here"
        problems.append(f"verifier {cfg.verifier.name!r} cannot run here: {exc}")
    return problems
