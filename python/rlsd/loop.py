"""The training loop, readable in one sitting.

One step:

    prompts   ~ sampler (curriculum level, epoch order)
    rollouts  n responses per prompt from the engine, with their sampling log-probs (old_logprobs)
    rewards   verifier(response, example) in [0, 1]  ->  group advantages A
    keep      dynamic sampling: drop groups whose rewards are all equal
    for each PPO epoch, for each PPO mini-batch (train.ppo_mini_batch_size prompts; 0 = all):
        for each micro-batch of sequences:
            teacher   no-grad pass of the same network on privileged prompt + response
            student   last hidden states at the response positions
            loss      fused rlsd_kernels loss on (hidden, lm_head.weight), normalised by the
                      mini-batch's GLOBAL denominator, so the summed micro-batch gradients equal
                      one big batch; rho = pi / pi_old departs from 1 after the first mini-batch
            backward
        clip gradients, optimizer step
    push the weights to the rollout engine

Each step's sampling randomness is seeded from (seed, step), so a resumed run draws the same
rollouts as an uninterrupted one.

Under ``torchrun`` every rank runs this same step and trains on its share of the samples; DDP sums
the gradients (distributed.py). Rank 0 evaluates, logs and saves checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from rlsd_kernels import fused_linear_logprobs
from rlsd_kernels.math import aggregation_denominator

from .advantages import group_advantages, lam_at
from .batch import micro_batches, pad_values, response_hidden
from .checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, config_to_dict
from .data import CurriculumSampler, informative_groups, load_examples
from .distributed import all_reduce_sum, init_distributed, wrap_student
from .evaluate import evaluate
from .metrics import MetricsLog, plot_metrics
from .model import lm_head, load_model, pick_device, prepare_model
from .objectives import algorithm_loss, thought_length
from .rollout import make_engine
from .teacher import Teacher, TeacherInputs, teacher_prompt
from .verifiers import check_row, make_verifier


@dataclass
class Sample:
    """One response ready for the loss."""
    context: list            # student prompt ids
    teacher_context: list    # privileged prompt ids (empty when no teacher is used)
    response: list           # response ids
    logprobs: list           # rollout-time log-probs of the response tokens
    advantage: float
    group: int = 0           # index of its prompt in the step (PPO mini-batches split by prompt)
    thought: int = 0         # tokens before the final answer (algo.credit_span 'thought')


def global_normalizer(loss_agg: str, lengths: list) -> float:
    """The denominator of the whole step's loss: the kernel's aggregation over all responses."""
    mask = torch.arange(max(lengths, default=0))[None, :] < torch.tensor(lengths)[:, None]
    return float(aggregation_denominator(mask, loss_agg))


def ppo_mini_batches(samples: list, prompts: int) -> list:
    """``samples`` split into consecutive mini-batches of ``prompts`` groups (0: one mini-batch)."""
    if prompts <= 0:
        return [samples]
    order = list(dict.fromkeys(s.group for s in samples))
    chunks = {g: i // prompts for i, g in enumerate(order)}
    out = [[] for _ in range(-(-len(order) // prompts))]
    for s in samples:
        out[chunks[s.group]].append(s)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: Config, model=None, tokenizer=None, train_examples=None, eval_examples=None):
        self.cfg = cfg.validate()
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed)
        self.rank, self.world_size, self.device = init_distributed(pick_device(t.device))
        # data first: a bad row is reported before any model is built
        gradable = functools.partial(check_row, cfg.verifier.name, **cfg.verifier.options)  # rows it cannot grade fail here
        self.train_examples = train_examples if train_examples is not None else load_examples(cfg.data.train, gradable)
        if eval_examples is None:
            eval_examples = load_examples(cfg.data.eval, gradable) if cfg.data.eval else []
        self.eval_examples = eval_examples[:t.eval_size] if t.eval_size else eval_examples
        if model is None:
            model, tokenizer = load_model(cfg.model, self.device)
        else:
            model = prepare_model(model, cfg.model, self.device)
        self.model, self.tokenizer = model, tokenizer
        self.ddp = wrap_student(model, self.device) if self.world_size > 1 else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.sampler = CurriculumSampler(self.train_examples, t.seed, cfg.data.curriculum,
                                         cfg.data.curriculum_threshold, cfg.data.curriculum_window)
        self.verifier = make_verifier(cfg.verifier.name, workers=cfg.verifier.workers or None, **cfg.verifier.options)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.teacher = Teacher(model, cfg.teacher) if cfg.algo.algorithm.needs_teacher else None
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.algo.loss.kl_coef else None
        self.engine = make_engine(cfg.rollout, model, tokenizer)
        self.answer_marker = tokenizer(cfg.algo.answer_marker, add_special_tokens=False)["input_ids"]
        self.step = 0
        tb = os.path.join(t.output_dir, "tensorboard") if t.tensorboard else ""
        self.log = MetricsLog(os.path.join(t.output_dir, "metrics.jsonl"), tb)

    # ----------------------------------------------------------------------------------- loop
    def train(self) -> list:
        """Run to ``train.steps``; returns the records logged by this call."""
        from tqdm import tqdm
        t = self.cfg.train
        records = []
        main = self.rank == 0
        if main and self.step == 0 and t.eval_every and self.eval_examples:
            records.append({"step": 0, **self.evaluate()})
            self.log.log(records[-1])
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and main), dynamic_ncols=True)
        while self.step < t.steps:
            record = self.train_step()
            records.append(record)
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}", acc=f"{record['accuracy']:.2f}",
                            s=f"{record['time_step']:.2f}")
            if not main:
                continue
            if self.eval_examples and ((t.eval_every and self.step % t.eval_every == 0) or self.step == t.steps):
                record.update(self.evaluate())
            self.log.log(record)
            if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.step == t.steps:
                self.save()
        bar.close()
        if main:
            plot_metrics(self.log.path, os.path.join(t.output_dir, "metrics.png"))
        return records

    def train_step(self) -> dict:
        cfg, r = self.cfg, self.cfg.rollout
        t0 = time.perf_counter()
        examples = [e for _, e in self.sampler.sample(cfg.train.prompts_per_step)]
        prompts = [self.encode(cfg.data.prompt_template.format(prompt=e.prompt)) for e in examples]
        groups = self.engine.generate(prompts, r.n, r.max_new_tokens, r.temperature,
                                      seed=cfg.train.seed * 1_000_003 + self.step)
        flat = self.verifier.batch([(x.text, e) for g, e in zip(groups, examples) for x in g])
        verdicts = [flat[i * r.n:(i + 1) * r.n] for i in range(len(groups))]
        rewards = torch.tensor([[v.reward for v in vs] for vs in verdicts], dtype=torch.float32)
        adv = group_advantages(rewards, cfg.algo.advantage)
        level = self.sampler.level
        self.sampler.update(rewards.flatten().tolist())
        keep = torch.ones(len(groups), dtype=torch.bool)
        if cfg.algo.samples_dynamically:
            keep = informative_groups(rewards)
        t1 = time.perf_counter()

        samples = []
        for g in keep.nonzero().flatten().tolist():
            teacher_ctx = self.encode(teacher_prompt(examples[g], cfg.teacher)) if self.teacher else []
            samples += [Sample(x.prompt_ids, teacher_ctx, x.response_ids, x.logprobs, float(a), g,
                               thought_length(x.response_ids, self.answer_marker))
                        for x, a in zip(groups[g], adv[g].tolist())]
        if self.teacher is not None:
            self.teacher.maybe_sync(self.step)
        loss, metrics = self.update(samples) if samples else (0.0, {})
        self.step += 1
        self.engine.sync(self.model)
        t2 = time.perf_counter()

        flat = [x for g in groups for x in g]
        reasons = Counter(v.reason.split(":")[0] for vs in verdicts for v in vs)
        curriculum = {"level": level, "level_pass_rate": self.sampler.pass_rate} if cfg.data.curriculum else {}
        return {"step": self.step, "lam": self.current_lam(self.step - 1), **curriculum,
                "reward_mean": rewards.mean().item(), "accuracy": (rewards >= 1.0).float().mean().item(),
                "groups_kept": int(keep.sum()), "response_len": sum(len(x.response_ids) for x in flat) / len(flat),
                "finished_frac": sum(x.finished for x in flat) / len(flat),
                # share of the rollout's response tokens with A != 0: credit_clip_frac x this is the
                # credit-clip fraction over all response tokens (the authors' denominator)
                "credited_frac": sum(len(s.response) for s in samples if s.advantage != 0)
                / max(sum(len(x.response_ids) for x in flat), 1),
                "loss": loss, **metrics,
                "reasons": dict(reasons), "time_rollout": t1 - t0, "time_train": t2 - t1, "time_step": t2 - t0}

    def update(self, samples: list):
        """``train.ppo_epochs`` passes over the PPO mini-batches of ``samples``, one optimizer step
        each; returns (loss, metrics), each the mean over the optimizer steps."""
        t = self.cfg.train
        if t.recompute_old_logprobs:
            samples = self.recompute_old_logprobs(samples)
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        losses, sums = [], Counter()
        for _ in range(t.ppo_epochs):
            for mini in ppo_mini_batches(samples, t.ppo_mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                loss, metrics = self.accumulate_gradients(mini)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
                self.optimizer.step()
                losses.append(loss)
                sums.update({**metrics, "grad_norm": float(grad_norm)})
        n = len(losses)
        return sum(losses) / n, {**{k: v / n for k, v in sums.items()}, "ppo_steps": n}

    @torch.no_grad()
    def recompute_old_logprobs(self, samples: list) -> list:
        """``samples`` with pi_old's log-probs from the trainer's model (before any step), not the engine's."""
        out, mbs = [], self.cfg.train.micro_batch_size
        for i in range(0, len(samples), mbs):
            batch = samples[i:i + mbs]
            hidden, targets, _ = response_hidden(self.model, [s.context for s in batch], [s.response for s in batch],
                                                 self.pad_id, self.device)
            weight, bias = lm_head(self.model)
            lp, _ = fused_linear_logprobs(hidden, weight, targets, bias=bias,
                                          temperature=self.cfg.rollout.temperature, impl=self.cfg.train.impl)
            out += [dataclasses.replace(s, logprobs=lp[j, :len(s.response)].tolist()) for j, s in enumerate(batch)]
        return out

    def accumulate_gradients(self, samples: list, micro_batch_size: int = 0):
        """Backward over ``samples`` in micro-batches, each normalised by the step's global
        denominator: the accumulated gradient equals that of one big batch. Under data parallelism
        this rank takes ``samples[rank::world_size]`` and the ranks' gradients are summed in the
        backward of its last micro-batch. Returns the summed loss (over all ranks) and the
        token-weighted mean of the kernel's metrics (over this rank's samples)."""
        lam = self.current_lam(self.step)
        normalizer = global_normalizer(self.cfg.algo.loss_agg, [len(s.response) for s in samples])
        mbs = micro_batch_size or self.cfg.train.micro_batch_size
        # DDP averages the ranks' gradients, but each rank's loss is already divided by the whole
        # step's denominator, so their sum is wanted: scale the backward by world_size.
        mine, scale = samples[self.rank::self.world_size], float(self.world_size)
        if not mine:  # fewer samples than ranks: join the gradient all-reduce with a zero gradient
            mine, scale = samples[:1], 0.0
        total, sums, count = 0.0, Counter(), 0
        lengths = [len(s.response) + max(len(s.context), len(s.teacher_context)) for s in mine]
        batches = micro_batches(lengths, mbs, self.cfg.train.micro_batch_tokens)
        for i, idx in enumerate(batches):
            batch = [mine[j] for j in idx]
            with self.gradient_sync(last=i == len(batches) - 1):
                loss, metrics = self.micro_batch_loss(batch, lam, normalizer)
                (loss * scale).backward()
            if scale == 0.0:
                continue
            total += loss.item()
            tokens = sum(len(s.response) for s in batch)
            sums.update({k: float(v) * tokens for k, v in metrics.items()})
            count += tokens
        if self.ddp is not None:
            total = all_reduce_sum(total, self.device)
        return total, {k: v / max(count, 1) for k, v in sums.items()}

    def gradient_sync(self, last: bool):
        """DDP reduces the gradients in the last micro-batch's backward only; the others accumulate locally."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def micro_batch_loss(self, batch: list, lam: float, normalizer: float):
        cfg = self.cfg
        hidden, targets, mask = response_hidden(self.model, [s.context for s in batch], [s.response for s in batch],
                                                self.pad_id, self.device, body=self.ddp)
        weight, bias = lm_head(self.model)
        T = targets.shape[1]
        teacher = self.teacher_inputs(batch, targets) if self.teacher is not None else TeacherInputs()
        credit_mask = None
        if cfg.algo.credit_span == "thought":
            credit_mask = (torch.arange(T)[None, :] < torch.tensor([s.thought for s in batch])[:, None]).to(mask)
        ref_lp = self.frozen_logprobs(self.ref, [s.context for s in batch], batch, targets) if self.ref else None
        loss, metrics = algorithm_loss(
            cfg.algo, lam, hidden, weight, targets, mask,
            advantages=torch.tensor([s.advantage for s in batch], device=self.device),
            teacher=teacher, old_logprobs=pad_values([s.logprobs for s in batch], T, self.device),
            ref_logprobs=ref_lp, bias=bias, temperature=cfg.rollout.temperature, normalizer=normalizer,
            impl=cfg.train.impl, credit_mask=credit_mask)
        return loss, metrics

    def teacher_inputs(self, batch: list, targets) -> TeacherInputs:
        """Live teacher: its hidden states (the kernel computes lp_T under the same head in the same
        pass). Frozen teacher: its log-probs under its own head."""
        contexts = [s.teacher_context for s in batch]
        if self.teacher.live:
            h_t, _ = self.teacher.hidden(contexts, [s.response for s in batch], self.pad_id, self.device)
            return TeacherInputs(hidden=h_t)
        return TeacherInputs(logprobs=self.frozen_logprobs(self.teacher.frozen, contexts, batch, targets))

    @torch.no_grad()
    def frozen_logprobs(self, net, contexts: list, batch: list, targets):
        hidden, _, _ = response_hidden(net, contexts, [s.response for s in batch], self.pad_id, self.device)
        weight, bias = lm_head(net)
        lp, _ = fused_linear_logprobs(hidden, weight, targets, bias=bias,
                                      temperature=self.cfg.rollout.temperature, impl=self.cfg.train.impl)
        return lp

    # -------------------------------------------------------------------------------- helpers
    def current_lam(self, step: int) -> float:
        a = self.cfg.algo
        return lam_at(step, a.loss.lam, a.lam_schedule, a.lam_end, a.lam_decay_steps, a.lam_warmup_steps)

    def encode(self, text: str) -> list:
        return self.tokenizer(text)["input_ids"]

    def evaluate(self, examples=None) -> dict:
        return evaluate(self.engine, self.tokenizer, examples or self.eval_examples, self.cfg.data.prompt_template,
                        self.verifier, self.cfg.rollout.max_new_tokens, temperature=0.0, seed=self.cfg.train.seed)

    def save(self) -> str:
        extra = {"teacher": self.teacher.state_dict() if self.teacher else None,
                 "ref": self.ref.state_dict() if self.ref is not None else None,
                 "config": config_to_dict(self.cfg)}
        return save_checkpoint(checkpoint_dir(self.cfg.train.output_dir, self.step), model=self.model,
                               tokenizer=self.tokenizer, optimizer=self.optimizer, sampler=self.sampler,
                               step=self.step, extra=extra)

    def resume(self, path: str = "") -> int:
        """Load ``path`` (default: the latest checkpoint of the output dir); returns the step reached."""
        path = path or latest_checkpoint(self.cfg.train.output_dir)
        if path is None:
            return self.step
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, sampler=self.sampler,
                                config=config_to_dict(self.cfg))
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.ref is not None:
            self.ref.load_state_dict(state["ref"])
        self.step = state["step"]
        if self.rank == 0:
            self.log.truncate_after(self.step)
        self.engine.sync(self.model)
        return self.step
