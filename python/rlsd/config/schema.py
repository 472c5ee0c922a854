"""The run's configuration: one dataclass per section, defaults and what each field means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlsd_kernels import RLSDOptions
from rlsd_kernels.privileged import PRIVILEGED_TEMPLATE

from ..algorithms import ALGORITHMS, Algorithm


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
    name: str = "rlsd"                   # a key of rlsd.algorithms.ALGORITHMS: grpo | opsd | grpo+opsd | rlsd
    advantage: str = "grpo"              # grpo: (R - mean) / (std + 1e-6) | drgrpo: R - mean
    # rlsd_loss's options: the fields, defaults and checks of rlsd_kernels.options.RLSDOptions. lam is
    # where the schedule starts (the algorithm's table may zero it); kl_coef > 0 keeps a frozen copy
    # of the start as the reference
    loss: RLSDOptions = field(default_factory=RLSDOptions)
    # constant | linear: lam -> lam_end over lam_decay_steps | warmup-decay (the authors'): 0 -> lam
    # over lam_warmup_steps, then lam -> 0 over lam_decay_steps (0: stays at lam), advantages.lam_at
    lam_schedule: str = "constant"
    lam_end: float = 0.0                 # linear only
    lam_decay_steps: int = 50
    lam_warmup_steps: int = 0            # warmup-decay only
    credit_span: str = "all"             # all | thought: reweight only tokens before the final answer,
    answer_marker: str = ""              # ... which starts at the last occurrence of this text's tokens
    loss_agg: str = "token-mean"         # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    opsd_form: str = "sampled"           # sampled | jsd
    opsd_beta: float = 0.5
    opsd_coef: float = 1.0               # alpha in grpo+opsd: L_GRPO + alpha L_OPSD
    # drop groups whose rewards are all equal; null: the algorithm's default (on, off for opsd)
    dynamic_sampling: Optional[bool] = None

    @property
    def algorithm(self) -> Algorithm:
        return ALGORITHMS[self.name]

    @property
    def samples_dynamically(self) -> bool:
        return self.algorithm.dynamic_sampling if self.dynamic_sampling is None else self.dynamic_sampling


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
        from .checks import validate
        return validate(self)
