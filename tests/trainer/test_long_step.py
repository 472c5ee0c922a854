"""Long traces: token micro-batching, the long step on a tiny model, what must not grow as [T, V] or
[L, L], and the long-step benchmark's out-of-memory planning (benchmarks/long_step.py)."""

import pytest
import torch

from rlsd.batch import micro_batches, response_hidden
from rlsd.config import TeacherConfig, config_from_dict
from rlsd.demo.task import ALPHABET, TEMPLATES, make_split
from rlsd.demo.tiny import char_tokenizer, tiny_qwen3
from rlsd.loop import Sample, Trainer
from rlsd.rollout.hf import HFEngine
from rlsd.rollout.vllm import engine_limits
from rlsd.teacher import Teacher

LONG = 3000


def tiny(max_len=4096):
    tok = char_tokenizer(ALPHABET)
    return tiny_qwen3(len(tok), hidden=32, layers=2, heads=1, head_dim=64, ffn=64, max_len=max_len), tok


def trainer_for(tmp_path, micro_batch_size, micro_batch_tokens):
    model, tok = tiny()
    cfg = config_from_dict({
        "model": {"gradient_checkpointing": True},
        "rollout": {"engine": "hf", "n": 2, "max_new_tokens": 4},
        "teacher": {"sync": "live", "source": "solution", "template": TEMPLATES["solution"]},
        "algo": {"name": "rlsd", "dynamic_sampling": False},
        "train": {"micro_batch_size": micro_batch_size, "micro_batch_tokens": micro_batch_tokens, "seed": 0,
                  "output_dir": str(tmp_path), "progress": False}})
    return Trainer(cfg, model, tok, make_split(4, 0))


def samples(vocab):
    """One long response and five short ones, advantages of both signs."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate([40, LONG, 25, 60, 10, 33]):
        ids = torch.randint(3, vocab, (n + 12,), generator=g).tolist()
        out.append(Sample(ids[:8], ids[:12], ids[12:], (-torch.rand(n, generator=g)).tolist(),
                          1.0 if i % 2 else -0.5))
    return out


def test_micro_batches_sort_by_length_and_cap_padded_tokens():
    assert micro_batches([5, 9, 7, 6, 8], 2) == [[0, 1], [2, 3], [4]]
    assert micro_batches([5, 3000, 7, 6], 8, max_tokens=3100) == [[1], [2, 3, 0]]
    assert micro_batches([5, 3000, 7, 6], 2, max_tokens=3100) == [[1], [2, 3], [0]]
    assert micro_batches([10, 10, 10], 8, max_tokens=25) == [[0, 1], [2]]


def test_token_micro_batches_give_the_gradient_of_one_batch(tmp_path):
    grads, losses, shapes = [], [], []
    for mbs, tokens in ((8, 0), (8, LONG + 100)):
        trainer = trainer_for(tmp_path / str(tokens), mbs, tokens)
        assert trainer.model.training and trainer.model.model.gradient_checkpointing
        assert trainer.model.config._attn_implementation == "sdpa"
        batch_loss = trainer.micro_batch_loss

        def spy(batch, *args, f=batch_loss):
            shapes.append((tokens, len(batch), max(len(s.response) for s in batch)))
            return f(batch, *args)

        trainer.micro_batch_loss = spy
        loss, _ = trainer.accumulate_gradients(samples(len(trainer.tokenizer)))
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    # one batch pads six sequences to the long one; token micro-batches put it alone
    assert shapes == [(0, 6, LONG), (LONG + 100, 1, LONG), (LONG + 100, 5, 60)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, g in grads[0].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_sequences_beyond_the_position_limit_are_refused():
    model, _ = tiny(max_len=128)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        response_hidden(model, [[3] * 8], [[4] * 121], 0)
    hidden, _, _ = response_hidden(model, [[3] * 8], [[4] * 120], 0)
    assert hidden.shape == (1, 120, 32)


def test_teacher_returns_hidden_states_and_never_applies_the_head():
    model, _ = tiny()

    def refuse(*_):
        raise AssertionError("the LM head was applied: [T, V] logits")

    model.lm_head.forward = refuse
    teacher = Teacher(model, TeacherConfig(sync="live"))
    h, (weight, _) = teacher.hidden([[3] * 12, [5] * 4], [[4] * 500, [6] * 7], 0)
    assert h.shape == (2, 500, 32) and weight.shape[1] == 32 and not h.requires_grad


def test_hf_rollout_logprobs_equal_a_forward_pass():
    model, tok = tiny()
    prompts = [[3, 4, 5], [6, 7]]
    groups = HFEngine(model, tok).generate(prompts, 2, 12, temperature=0.7, seed=0)
    for p, group in zip(prompts, groups):
        for r in group:
            ids = torch.tensor([p + r.response_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1:-1] / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, ids[0, len(p):, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(r.logprobs), want, rtol=1e-4, atol=1e-4)


def test_vllm_limits_admit_the_longest_response():
    from transformers import Qwen2Config
    qwen = Qwen2Config(hidden_size=896, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24,
                       max_position_embeddings=131072)
    lim = engine_limits(qwen, 2, max_new_tokens=32768)
    assert lim["max_model_len"] == 32768 + 4096
    assert lim["kv_cache_memory_bytes"] >= 2 * 24 * 2 * 64 * 2 * lim["max_model_len"]
    qwen.max_position_embeddings = 32768
    assert engine_limits(qwen, 2, 32768)["max_model_len"] == 32768
    assert engine_limits(qwen, 2, 32768, max_model_len=8192)["max_model_len"] == 8192


def test_long_step_plans_eager_out_of_memory(monkeypatch):
    from benchmarks import long_step, measure
    from benchmarks.inputs import GiB
    monkeypatch.setattr(measure, "available_bytes", lambda device="cpu": 24 * GiB)
    args = type("Args", (), {"layers": 1, "device": "cpu"})()
    row = long_step.run_case(args, 32768, "eager", {})
    need = long_step.state_bytes(1) + 3 * 32768 * 151936 * 4 + (32768 + 151936) * 896 * 4
    assert row["status"] == f"out of memory (needs {need / GiB:.1f} GiB, 24.0 GiB available)"
    assert long_step.state_bytes(1) == 16 * (151936 * 896 + 896 + 896 * 896 * 2 + 2 * 896 * 128 + 3 * 896 * 4864
                                             + 2 * 896 + 896 + 2 * 128)
