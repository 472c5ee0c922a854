"""One dataclass tree for a run, loaded from YAML (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
import re
import string
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import yaml

from rlsd_kernels.math import LOSS_AGGS
from rlsd_kernels.options import FIELDS as LOSS_OPTIONS
from rlsd_kernels.options import RLSDOptions
from rlsd_kernels.ops import IMPLS
from rlsd_kernels.privileged import PRIVILEGED_TEMPLATE



@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    path: str = ""                       # a local Hugging Face causal-LM directory
    dtype: str = "auto"                  # auto (bf16 where the device has it, else fp32) | float32 | bfloat16
    gradient_checkpointing: bool = False # recompute each layer in backward: activations O(layers x L x H)
    attn_implementation: str = "auto"    # auto: flash_attention_2 on CUDA if installed, else sdpa | eager
    lora: Optional[LoraConfig] = None    # None: full fine-tuning


@dataclass
class DataConfig:
    train: str = ""                      # JSONL or Parquet: prompt, answer, optional solution, difficulty
    eval: str = ""                       # held-out set, same format
    prompt_template: str = "{prompt}"    # what the student sees; {prompt} is the example's prompt
    curriculum: bool = False             # move to the next difficulty when the pass rate crosses
    curriculum_threshold: float = 0.7    # ... this value over the last
    curriculum_window: int = 128         # ... this many rewards at the current level


@dataclass
class VerifierConfig:
    name: str = "math"                   # a key of rlsd.verifiers.REGISTRY
    options: dict = field(default_factory=dict)
    workers: int = 0                     # threads verifying a batch of responses; 0 = 2 x cores


@dataclass
class RolloutConfig:
    engine: str = "hf"                   # hf | vllm
    n: int = 8                           # responses per prompt (the group)
    max_new_tokens: int = 256
    temperature: float = 1.0             # also the loss temperature: log-probs after temperature
    vllm_options: dict = field(default_factory=dict)


@dataclass
class TeacherConfig:
    sync: str = "live"                   # live: current weights | frozen: a copy re-synced every K steps
    sync_every: int = 20
    source: str = "answer"               # answer | solution (a verified trace) | document
    template: str = PRIVILEGED_TEMPLATE


@dataclass
class AlgoConfig:
    name: str = "rlsd"                   # grpo | opsd | grpo+opsd | rlsd
    advantage: str = "grpo"              # grpo: (R - mean) / (std + 1e-6) | drgrpo: R - mean
    lam: float = RLSDOptions.lam          # RLSD credit strength (ignored by grpo / opsd)
    # constant | linear: lam -> lam_end over lam_decay_steps | warmup-decay (the authors'): 0 -> lam
    # over lam_warmup_steps, then lam -> 0 over lam_decay_steps (0: stays at lam), advantages.lam_at
    lam_schedule: str = "constant"
    lam_end: float = 0.0                 # linear only
    lam_decay_steps: int = 50
    lam_warmup_steps: int = 0            # warmup-decay only
    negative_only: bool = False          # reweight only responses with A < 0 (the rest keep Ahat = A)
    credit_span: str = "all"             # all | thought: reweight only tokens before the final answer,
    answer_marker: str = ""              # ... which starts at the last occurrence of this text's tokens
    eps_w: float = RLSDOptions.eps_w
    eps_low: float = RLSDOptions.eps_low
    eps_high: float = RLSDOptions.eps_high
    dual_clip: Optional[float] = RLSDOptions.dual_clip
    entropy_coef: float = RLSDOptions.entropy_coef
    kl_coef: float = RLSDOptions.kl_coef  # > 0 keeps a frozen copy of the start as the reference
    kl_type: str = RLSDOptions.kl_type
    loss_agg: str = "token-mean"         # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    opsd_form: str = "sampled"           # sampled | jsd
    opsd_beta: float = 0.5
    opsd_coef: float = 1.0               # alpha in grpo+opsd: L_GRPO + alpha L_OPSD
    dynamic_sampling: bool = True        # drop groups whose rewards are all equal (not for opsd)


@dataclass
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 16
    micro_batch_size: int = 32           # sequences per forward/backward; the loss normaliser is global
    # Long traces (docs/long-traces.md): model.gradient_checkpointing true, and micro-batches capped by
    # padded tokens rather than sequences: responses are sorted by length, a long one goes alone (no
    # padding, no [L, L] mask), short ones share a micro-batch. The teacher pass runs per micro-batch
    # and returns hidden states only. 0 = off (consecutive slices of micro_batch_size sequences).
    micro_batch_tokens: int = 0
    # PPO mini-batches: the rollout batch is split into optimizer steps of this many prompts (their
    # groups), each normalised by its own global denominator; 0 = the whole batch in one step.
    # After the first mini-batch the policy has moved, so rho = pi / pi_old departs from 1 and clips.
    ppo_mini_batch_size: int = 0
    ppo_epochs: int = 1                  # passes over the rollout batch
    recompute_old_logprobs: bool = False # pi_old from the trainer's model before the first step, not the engine
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0                     # torch intra-op threads; 0 = torch's default
    device: str = "auto"                 # auto | cpu | cuda
    impl: str = "auto"                   # rlsd_kernels backend
    output_dir: str = "runs/rlsd"
    eval_every: int = 0                  # 0 = only at the end
    eval_size: int = 0                   # 0 = the whole eval set
    checkpoint_every: int = 0            # 0 = only at the end
    tensorboard: bool = False
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        """Check every field's type and value; raise :class:`ConfigError` naming each bad key."""
        problems = _type_problems(self, "")
        if not problems:
            problems = _value_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        return self


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
    from .verifiers import REGISTRY  # the registry fills itself on import; config stays importable alone
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


def _value_problems(cfg: Config) -> list:
    """Values out of range and unknown names, one message per key."""
    m, d, r, te, a, t = cfg.model, cfg.data, cfg.rollout, cfg.teacher, cfg.algo, cfg.train
    choices = [
        ("model.dtype", m.dtype, ("auto", "float32", "bfloat16", "float16")),
        ("rollout.engine", r.engine, ("hf", "vllm")),
        ("teacher.sync", te.sync, ("live", "frozen")),
        ("teacher.source", te.source, ("answer", "solution", "document")),
        ("algo.name", a.name, ("grpo", "opsd", "grpo+opsd", "rlsd")),
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
    problems += [f"algo.{p}" for name in LOSS_OPTIONS if (p := RLSDOptions.problem(name, getattr(a, name)))]
    problems += _template_problems("data.prompt_template", d.prompt_template, ("prompt",))
    problems += _template_problems("teacher.template", te.template, ("prompt", "reference"))
    problems += _verifier_problems(cfg.verifier)
    if a.credit_span == "thought" and not a.answer_marker:
        problems.append("algo.credit_span 'thought' needs algo.answer_marker: the text that starts the final answer")
    if "opsd" in a.name and a.opsd_form == "jsd" and te.sync != "live":
        problems.append("algo.opsd_form 'jsd' compares full distributions under one LM head: "
                        "it needs teacher.sync 'live'")
    return problems


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, recursing into sections; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = [repr(prefix + str(key)) + _suggest(key, names, prefix) for key in data if key not in names]
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"{where or 'the top level'} has {names}")
    kwargs = {}
    for key, value in data.items():
        kind, _ = _unwrap(hints[key])
        section = dataclasses.is_dataclass(kind) and isinstance(value, dict)
        kwargs[key] = _build(kind, value, f"{where}.{key}".lstrip(".")) if section else value
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, {} if data is None else data, "").validate()


def _field_type(dotted: str):
    """The annotated type of the config key ``dotted`` (None inside free-form option mappings)."""
    cls, where = Config, ""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"unknown key {prefix + part!r}{_suggest(part, names, prefix)}; "
                              f"{where or 'the top level'} has {names}")
        kind, _ = _unwrap(typing.get_type_hints(cls)[part])
        where = f"{where}.{part}".lstrip(".")
        if i == len(parts) - 1 or kind is dict:
            return kind if i == len(parts) - 1 else None
        if not dataclasses.is_dataclass(kind):
            raise ConfigError(f"{where} is a value, not a section: cannot set {dotted!r}")
        cls = kind


def parse_value(text: str):
    """A command-line value: JSON if it parses (numbers, true/false/null, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_override(data: dict, item: str) -> None:
    """Apply one ``--set key.sub=value`` to the raw mapping ``data``; string fields take the text as is."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-5")
    try:
        kind = _field_type(key)
    except ConfigError as exc:
        raise ConfigError(f"--set {item!r}: {exc}") from None
    *path, last = key.split(".")
    node = data
    for i, part in enumerate(path):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:i + 1])} is {_show(node[part])}, not a mapping")
        node = node[part]
    node[last] = text if kind is str else parse_value(text)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a number (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                        f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(path: str) -> dict:
    """The top-level mapping of the YAML file ``path``; :class:`ConfigError` naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable UTF-8 text file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, ...), got {_show(data)}")
    return data


def _environment_problems(cfg: Config) -> list:
    """Files and directories the config names that do not exist; a verifier that cannot run here."""
    from .verifiers import CHECKS
    files = [("data.train", cfg.data.train, os.path.isfile, "file"), ("data.eval", cfg.data.eval, os.path.isfile, "file"),
             ("model.path", cfg.model.path, os.path.isdir, "directory")]
    problems = [f"{key}: no such {what}: {value!r}" for key, value, exists, what in files if value and not exists(value)]
    try:
        CHECKS.get(cfg.verifier.name, lambda **_: None)(**cfg.verifier.options)
    except Exception as exc:  # each check raises its own kind; all mean "cannot run here"
        problems.append(f"verifier {cfg.verifier.name!r} cannot run here: {exc}")
    return problems


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> Config:
    """Read YAML at ``path``, apply ``key.sub=value`` overrides (values: see :func:`parse_value`) and
    validate everything, including that the data files and the model directory it names exist and
    that its verifier can run here."""
    data = read_yaml(path) if path else {}
    for item in overrides or []:
        apply_override(data, item)
    source = (path or "config") + (f" with --set {' '.join(overrides)}" if overrides else "")
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    problems = _environment_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
