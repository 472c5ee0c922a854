"""One dataclass tree for a run, loaded from YAML (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from rlsd_kernels.math import RLSDConfig
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
    gradient_checkpointing: bool = False
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
    lam: float = RLSDConfig.lam          # RLSD credit strength (ignored by grpo / opsd)
    lam_schedule: str = "constant"       # constant | linear (lam -> lam_end over lam_decay_steps)
    lam_end: float = 0.0
    lam_decay_steps: int = 50
    eps_w: float = RLSDConfig.eps_w
    eps_low: float = RLSDConfig.eps_low
    eps_high: float = RLSDConfig.eps_high
    dual_clip: Optional[float] = RLSDConfig.dual_clip
    entropy_coef: float = RLSDConfig.entropy_coef
    kl_coef: float = RLSDConfig.kl_coef  # > 0 keeps a frozen copy of the start as the reference
    kl_type: str = RLSDConfig.kl_type
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
        choices = {
            "algo.name": (self.algo.name, ("grpo", "opsd", "grpo+opsd", "rlsd")),
            "algo.advantage": (self.algo.advantage, ("grpo", "drgrpo")),
            "algo.lam_schedule": (self.algo.lam_schedule, ("constant", "linear")),
            "algo.opsd_form": (self.algo.opsd_form, ("sampled", "jsd")),
            "teacher.sync": (self.teacher.sync, ("live", "frozen")),
            "teacher.source": (self.teacher.source, ("answer", "solution", "document")),
            "rollout.engine": (self.rollout.engine, ("hf", "vllm")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        if "opsd" in self.algo.name and self.algo.opsd_form == "jsd" and self.teacher.sync != "live":
            raise ValueError("opsd_form 'jsd' compares full distributions under one LM head: "
                             "it needs teacher.sync 'live'")
        return self


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclass fields."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KeyError(f"{where or 'config'}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        inner = [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
        target = kind if dataclasses.is_dataclass(kind) else (inner[0] if inner else None)
        kwargs[key] = _build(target, value, f"{where}.{key}".lstrip(".")) if target else value
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    return _build(Config, data or {}, "").validate()


def _set_dotted(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data.setdefault(key, {})
    data[last] = value


def parse_value(text: str):
    """A command-line value: JSON if it parses (numbers, true/false/null, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> Config:
    """Read YAML at ``path`` and apply ``key.sub=value`` overrides (values: see :func:`parse_value`)."""
    data = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    for item in overrides or []:
        key, _, value = item.partition("=")
        _set_dotted(data, key.strip(), parse_value(value))
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
