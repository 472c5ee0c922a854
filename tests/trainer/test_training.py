import pytest
import torch

from privileged_cases import PLAIN
from trainer_helpers import examples, grads, make_config, max_change, params_copy, tiny_setup
from rlsd.config import TeacherConfig
from rlsd.data import Example
from rlsd.loop import Sample, Trainer
from rlsd.teacher import teacher_prompt


def fixed_batch(trainer, seed=1):
    """Rollouts of the trainer's model on 4 prompts, with advantages +1 / -1 alternating."""
    exs = trainer.train_examples[:4]
    prompts = [trainer.encode(e.prompt) for e in exs]
    groups = trainer.engine.generate(prompts, 4, 10, trainer.cfg.rollout.temperature, seed=seed)
    out = []
    for e, g in zip(exs, groups):
        ctx = trainer.encode(teacher_prompt(e, trainer.cfg.teacher))
        out += [Sample(r.prompt_ids, ctx, r.response_ids, r.logprobs, 1.0 if i % 2 else -1.0)
                for i, r in enumerate(g)]
    return out


def batch_loss(trainer, samples):
    trainer.model.zero_grad(set_to_none=True)
    loss, metrics = trainer.accumulate_gradients(samples)
    trainer.model.zero_grad(set_to_none=True)
    return loss, metrics


def sq_delta(trainer, samples):
    """mean (lp_T - lp_S)^2 over the batch's tokens: what sampled OPSD with a frozen teacher reduces."""
    targets = None
    with torch.no_grad():
        from rlsd.batch import response_hidden
        from rlsd.model import lm_head
        from rlsd_kernels import fused_linear_logprobs
        h, targets, mask = response_hidden(trainer.model, [s.context for s in samples],
                                           [s.response for s in samples], trainer.pad_id)
        lp_s, _ = fused_linear_logprobs(h, lm_head(trainer.model)[0], targets)
        lp_t = trainer.teacher_inputs(samples, targets).logprobs
        return (((lp_t - lp_s) ** 2) * mask).sum().item() / mask.sum().item()


ALGOS = [
    ("grpo", {}, {}),
    ("rlsd", {}, {}),
    ("rlsd", {"lam_schedule": "linear", "loss": {"lam": 0.5}}, {"sync": "frozen", "sync_every": 100}),
    ("grpo+opsd", {"opsd_coef": 0.5}, {}),
    ("opsd", {"opsd_form": "jsd"}, {}),
]


@pytest.mark.parametrize("name,algo,teacher", ALGOS, ids=[a[0] + str(i) for i, a in enumerate(ALGOS)])
def test_steps_change_weights_and_lower_loss(tmp_path, name, algo, teacher):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, algo={"name": name, **algo}, teacher=teacher)
    trainer = Trainer(cfg, model, tok, examples())
    samples = fixed_batch(trainer)
    before_w = params_copy(trainer.model)
    before, metrics = batch_loss(trainer, samples)
    for _ in range(4):
        trainer.update(samples)
    after, _ = batch_loss(trainer, samples)
    assert max_change(before_w, trainer.model) > 1e-4
    assert after < before - 1e-2 * abs(before), (before, after)
    if name == "rlsd":
        assert "credit_clip_frac" in metrics and "delta_mean" in metrics


def test_opsd_sampled_frozen_teacher_pulls_student_to_teacher(tmp_path):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, algo={"name": "opsd"}, teacher={"sync": "frozen", "sync_every": 100})
    trainer = Trainer(cfg, model, tok, examples())
    samples = fixed_batch(trainer)
    before_w, before = params_copy(trainer.model), sq_delta(trainer, samples)
    for _ in range(4):
        trainer.update(samples)
    assert max_change(before_w, trainer.model) > 1e-4
    assert sq_delta(trainer, samples) < before


@pytest.mark.parametrize("prompt,reference,template,want", PLAIN)
def test_teacher_prompt_of_an_example(prompt, reference, template, want):
    """The trainer's teacher prompt: the library's builder on the example's prompt and reference."""
    cfg = TeacherConfig(source="answer", **({"template": template} if template else {}))
    assert teacher_prompt(Example(prompt=prompt, answer=reference), cfg) == want


def test_teacher_logprobs_come_from_privileged_prompt(tmp_path):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, teacher={"sync": "frozen"})
    trainer = Trainer(cfg, model, tok, examples())
    samples = fixed_batch(trainer)[:2]
    e = trainer.train_examples[0]
    assert tok.decode(samples[0].teacher_context) == e.solution + "|" + e.prompt
    targets = torch.zeros(2, max(len(s.response) for s in samples), dtype=torch.long)
    for i, s in enumerate(samples):
        targets[i, :len(s.response)] = torch.tensor(s.response)
    lp_t = trainer.teacher_inputs(samples, targets).logprobs
    for i, s in enumerate(samples):
        for ctx, should_match in ((s.teacher_context, True), (s.context, False)):
            ids = torch.tensor([ctx + s.response])
            with torch.no_grad():
                logits = trainer.model(ids).logits[0, len(ctx) - 1:-1]
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.response)[:, None]).squeeze(-1)
            close = torch.allclose(lp_t[i, :len(s.response)], ref, atol=1e-5)
            assert close == should_match


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, loss_agg):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, algo={"name": "rlsd", "loss_agg": loss_agg})
    trainer = Trainer(cfg, model, tok, examples())
    samples = fixed_batch(trainer)
    trainer.model.zero_grad(set_to_none=True)
    big_loss, _ = trainer.accumulate_gradients(samples, micro_batch_size=len(samples))
    big = grads(trainer.model)
    trainer.model.zero_grad(set_to_none=True)
    small_loss, _ = trainer.accumulate_gradients(samples, micro_batch_size=3)
    small = grads(trainer.model)
    assert small_loss == pytest.approx(big_loss, abs=1e-6)
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=1e-6, rtol=1e-5)


def test_rollout_logprobs_match_trainer(tmp_path):
    model, tok = tiny_setup()
    model.generation_config.top_k = 3  # a model's own sampling defaults must not leak into rollouts
    trainer = Trainer(make_config(tmp_path, rollout={"temperature": 0.7}), model, tok, examples())
    samples = fixed_batch(trainer)
    from rlsd.batch import pad_values, response_hidden
    from rlsd.model import lm_head
    from rlsd_kernels import fused_linear_logprobs
    with torch.no_grad():
        h, targets, mask = response_hidden(trainer.model, [s.context for s in samples],
                                           [s.response for s in samples], trainer.pad_id)
        lp, _ = fused_linear_logprobs(h, lm_head(trainer.model)[0], targets, temperature=0.7)
    old = pad_values([s.logprobs for s in samples], targets.shape[1])
    torch.testing.assert_close(lp * mask, old * mask, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["grpo", "rlsd"])
def test_entropy_metric_comes_from_the_loss_sweep(tmp_path, name):
    model, tok = tiny_setup()
    trainer = Trainer(make_config(tmp_path, algo={"name": name}), model, tok, examples())
    samples = fixed_batch(trainer)
    _, metrics = batch_loss(trainer, samples)
    ents = []
    with torch.no_grad():
        for s in samples:
            logits = trainer.model(torch.tensor([s.context + s.response])).logits[0, len(s.context) - 1:-1]
            ents.append(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1))
    assert metrics["entropy_mean"] == pytest.approx(torch.cat(ents).mean().item(), abs=1e-5)
    assert not hasattr(trainer, "entropy_mean")
