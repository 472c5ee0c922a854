"""RLSDTrainer against TRL 1.16's own GRPOTrainer on a tiny Qwen3 built in code (no hub access):
at lam = 0 one ``compute_loss`` on a prepared batch gives TRL's loss and parameter gradients; at
lam > 0 the loss is the RLSD loss of TRL's own per-token log-probs under the student and the
teacher prompt; and a two-step ``train()`` runs with the teacher built from a dataset column."""

import copy
import string
import types

import pytest
import torch

pytest.importorskip("trl", reason="trl is not installed")
from datasets import Dataset  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from privileged_cases import CHAT, PLAIN  # noqa: E402
from rlsd_kernels.integrations.trl import RLSDTrainer  # noqa: E402
from rlsd_kernels.math import aggregation_weights, clipped_surrogate, rlsd_credit  # noqa: E402
from rlsd_kernels.privileged import privileged_prompt  # noqa: E402

TOL = dict(rtol=2e-4, atol=1e-6)


def char_tokenizer():
    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {c: i for i, c in enumerate(specials + list(string.printable[:95]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_qwen3(vocab_size):
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def reward_digits(completions, **kwargs):
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def dataset(n=4):
    return Dataset.from_list([{"prompt": f"{a}+{a + 1}=", "privileged": f"{2 * a + 1}"} for a in range(10, 10 + n)])


def config(tmp_path, **overrides):
    opts = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
                report_to="none", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, max_steps=2,
                epsilon_high=0.28, use_bias_correction_kl=False, seed=0)
    return GRPOConfig(**{**opts, **overrides})


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    tok = char_tokenizer()
    model = tiny_qwen3(len(tok))
    args = config(tmp_path_factory.mktemp("trl"))
    trl_trainer = GRPOTrainer(copy.deepcopy(model), reward_digits, args=args, train_dataset=dataset(),
                              processing_class=tok)
    rlsd_trainer = RLSDTrainer(copy.deepcopy(model), reward_digits, args=args, train_dataset=dataset(),
                               processing_class=tok, lam=0.0)
    return trl_trainer, rlsd_trainer, tok


def prepared_batch(tok, old=True, ref=True):
    """A batch as ``_generate_and_score_completions`` hands it to the loss: left-padded prompts,
    right-padded completions (one of them empty), per-sequence advantages."""
    torch.manual_seed(1)
    prompts = ["12+13=", "7+8=", "100+1=", "5="]
    teacher = [privileged_prompt(p, "ref 42") for p in prompts]

    def left_pad(texts):
        ids = [torch.tensor(tok(t)["input_ids"]) for t in texts]
        P = max(len(i) for i in ids)
        return (torch.stack([torch.cat([torch.zeros(P - len(i), dtype=torch.long), i]) for i in ids]),
                torch.stack([torch.cat([torch.zeros(P - len(i), dtype=torch.long), torch.ones_like(i)]) for i in ids]))

    prompt_ids, prompt_mask = left_pad(prompts)
    teacher_ids, teacher_mask = left_pad(teacher)
    C = 6
    completion_ids = torch.randint(3, len(tok), (4, C))
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [0] * 6])
    completion_ids = completion_ids * completion_mask
    batch = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                 completion_mask=completion_mask, advantages=torch.tensor([1.2, -0.7, 0.4, -1.0]),
                 num_items_in_batch=torch.tensor(25.0), teacher_prompt_ids=teacher_ids,
                 teacher_prompt_mask=teacher_mask)
    noise = lambda: 0.3 * torch.randn(4, C) - 4.0  # noqa: E731  (log-probs near a 1/97 guess)
    if old:
        batch["old_per_token_logps"] = noise()
    if ref:
        batch["ref_per_token_logps"] = noise()
    return batch


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def configure(trainer, **attrs):
    for k, v in attrs.items():
        setattr(trainer, k, v)
    trainer.current_gradient_accumulation_steps = 2


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("old,beta", [(False, 0.0), (True, 0.0), (True, 0.04)])
def test_matches_grpo_trainer_at_lam_zero(trainers, loss_type, old, beta):
    trl_trainer, rlsd_trainer, tok = trainers
    for t in (trl_trainer, rlsd_trainer):
        configure(t, loss_type=loss_type, beta=beta)
    inputs = prepared_batch(tok, old=old, ref=beta != 0)
    want_loss, want_grads = loss_and_grads(trl_trainer, inputs)
    got_loss, got_grads = loss_and_grads(rlsd_trainer, inputs)
    torch.testing.assert_close(got_loss, want_loss, **TOL)
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        torch.testing.assert_close(g, want_grads[name], **TOL, msg=lambda m: f"{name}: {m}")
    for key in ("entropy", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        assert rlsd_trainer._metrics["train"][key][-1] == pytest.approx(trl_trainer._metrics["train"][key][-1],
                                                                         rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("variant", [dict(loss_type="cispo", epsilon_high=2.0), dict(loss_type="sapo"),
                                     dict(loss_type="vespo"), dict(loss_type="luspo", importance_sampling_level="sequence"),
                                     dict(importance_sampling_level="sequence"),
                                     dict(loss_type="grpo", importance_sampling_level="sequence"),
                                     dict(beta=0.04, use_bias_correction_kl=True), dict(delta=1.1)])
def test_variants_match_grpo_trainer_at_lam_zero(trainers, variant):
    """GRPOConfig's other loss types, GSPO, the bias-corrected KL and two-sided clipping: loss and
    gradients equal TRL's at lam = 0."""
    trl_trainer, rlsd_trainer, tok = trainers
    args = trl_trainer.args  # shared by both trainers; restored after
    saved = {k: getattr(args, k) for k in ("use_bias_correction_kl", "delta")}
    attrs = dict(dict(loss_type="dapo", beta=0.0, importance_sampling_level="token", epsilon_high=0.28),
                 **{k: v for k, v in variant.items() if k not in saved})
    try:
        for k in saved:
            setattr(args, k, variant.get(k, saved[k]))
        for t in (trl_trainer, rlsd_trainer):
            configure(t, **attrs)
        inputs = prepared_batch(tok, old=True, ref=attrs["beta"] != 0)
        want_loss, want_grads = loss_and_grads(trl_trainer, inputs)
        got_loss, got_grads = loss_and_grads(rlsd_trainer, inputs)
    finally:
        for k, v in saved.items():
            setattr(args, k, v)
        for t in (trl_trainer, rlsd_trainer):
            configure(t, importance_sampling_level="token", epsilon_high=0.28)
    torch.testing.assert_close(got_loss, want_loss, **TOL)
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        torch.testing.assert_close(g, want_grads[name], **TOL, msg=lambda m: f"{name}: {m}")


def test_rlsd_loss_uses_the_teacher_prompt(trainers):
    """The loss at lam > 0 equals the RLSD surrogate of TRL's own per-token log-probs of the
    completion after the student prompt and after the teacher prompt."""
    trl_trainer, rlsd_trainer, tok = trainers
    configure(rlsd_trainer, loss_type="dapo", beta=0.0, lam=0.8)
    inputs = prepared_batch(tok, ref=False)
    got_loss, got_grads = loss_and_grads(rlsd_trainer, inputs)

    model, C = rlsd_trainer.model, inputs["completion_ids"].size(1)
    model.zero_grad()

    def logps(prompt_ids, prompt_mask):
        ids = torch.cat([prompt_ids, inputs["completion_ids"]], 1)
        mask = torch.cat([prompt_mask, inputs["completion_mask"]], 1)
        return rlsd_trainer._get_per_token_logps_and_entropies(model, ids, mask, C)[0]

    lp = logps(inputs["prompt_ids"], inputs["prompt_mask"])
    with torch.no_grad():
        lp_teacher = logps(inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"])
    mask = inputs["completion_mask"]
    adv = inputs["advantages"].unsqueeze(1).expand_as(lp)
    ahat, _ = rlsd_credit(lp_teacher - lp.detach(), adv, 0.8, 0.2)
    per_token = clipped_surrogate(lp, inputs["old_per_token_logps"], ahat, 0.2, 0.28)
    normalizer = inputs["num_items_in_batch"] * 2 / rlsd_trainer.args.steps_per_generation
    want_loss = (aggregation_weights(mask, "token-mean", normalizer) * per_token).sum()
    want_loss.backward()
    torch.testing.assert_close(got_loss, want_loss.detach(), **TOL)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got_grads[name], p.grad, **TOL, msg=lambda m: f"{name}: {m}")
    assert rlsd_trainer._metrics["train"]["rlsd/credit_clip_frac"][-1] > 0
    rlsd_trainer.lam = 0.0


def test_unsupported_options_raise(tmp_path):
    tok = char_tokenizer()
    with pytest.raises(NotImplementedError, match="top_entropy_quantile"):
        RLSDTrainer(tiny_qwen3(len(tok)), reward_digits, args=config(tmp_path, top_entropy_quantile=0.5),
                    train_dataset=dataset(), processing_class=tok)


def test_train_smoke(tmp_path):
    """Two optimizer steps with generation, the teacher prompt built from the ``privileged`` column."""
    tok = char_tokenizer()
    model = tiny_qwen3(len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RLSDTrainer(model, reward_digits, args=config(tmp_path, per_device_train_batch_size=2,
                                                            learning_rate=1e-2, max_steps=2),
                          train_dataset=dataset(), processing_class=tok, lam=0.5)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rlsd/delta_mean" in entry]
    assert len(logged) == 2
    assert any((p.detach() - before[n]).abs().max() > 0 for n, p in model.named_parameters())


@pytest.mark.parametrize("prompt,reference,template,want", PLAIN + CHAT)
def test_teacher_prompts_of_dataset_rows(prompt, reference, template, want):
    """The teacher prompt of a row (plain or conversational), as the library's builder writes it."""
    trainer = types.SimpleNamespace(privileged_column="hint", teacher_template=template)
    assert RLSDTrainer.teacher_prompts(trainer, [{"prompt": prompt, "hint": reference}]) == [want]
