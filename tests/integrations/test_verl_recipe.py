"""The RLSD recipe on veRL 0.9.1's driver (python/rlsd/verl): settings, privileged prompts, and one
``RLSDRayPPOTrainer._update_actor`` driving veRL's real actor worker (``RLSDActorRolloutRefWorker``,
FSDP2 on the CPU, in this process: the worker group is called directly, not through Ray) on a batch
laid out as veRL's ``fit`` hands it over. Skipped where verl is not installed (run in .venv-verl)."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed: run these tests in .venv-verl (make verl-env)")
pytest.importorskip("cachetools", reason="veRL's PPO driver imports cachetools (requirements-verl.txt)")

from omegaconf import OmegaConf  # noqa: E402
from test_verl_actor import cpu_process_group, padded_proto, tiny_model_dir, verl_config  # noqa: E402,F401
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

import rlsd.verl.trainer  # noqa: E402
from rlsd.advantages import lam_at  # noqa: E402
from rlsd.verl.trainer import (RLSDActorRolloutRefWorker, RLSDRayPPOTrainer, RLSDSettings,  # noqa: E402
                               teacher_batch, teacher_messages)
from rlsd_kernels.integrations.verl import TEACHER_KEY  # noqa: E402
from privileged_cases import CHAT as CHAT_PROMPTS  # noqa: E402
from rlsd_kernels.options import RLSDOptions  # noqa: E402
from rlsd_kernels.privileged import privileged_prompt  # noqa: E402

CHAT = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"
PROMPTS = ["12+34", "5+6"]
REFERENCES = ["46", "11"]


SHIPPED = OmegaConf.load(os.path.join(os.path.dirname(rlsd.verl.trainer.__file__), "config", "rlsd_trainer.yaml"))


def settings(**changes):
    """The shipped config's ``rlsd`` section with ``changes``."""
    return RLSDSettings.from_config({**OmegaConf.to_container(SHIPPED.rlsd), **changes})


def test_settings_of_the_shipped_config():
    s = settings()
    assert s.loss == RLSDOptions(lam=0.5) and s.template is None and s.privileged_key == "privileged"
    assert s.options_at(3) == RLSDOptions(lam=lam_at(3, 0.5, "warmup-decay", 0.0, 50, 0))


def test_settings_refuse_unknown_moved_missing_and_bad_keys():
    with pytest.raises(ValueError, match="unknown keys rlsd.lamda; rlsd has"):
        settings(lamda=0.5)
    with pytest.raises(ValueError, match="keys rlsd.lam \\(moved to rlsd.loss.lam\\), rlsd.eps_w \\(moved"):
        settings(lam=0.5, eps_w=0.2)
    with pytest.raises(ValueError, match="rlsd.loss.eps_low \\(set by veRL: actor_rollout_ref.actor.clip_ratio_low\\)"):
        settings(loss={"eps_low": 0.1})
    with pytest.raises(ValueError, match="missing keys rlsd.lam_end \\("):
        RLSDSettings.from_config({k: v for k, v in OmegaConf.to_container(SHIPPED.rlsd).items() if k != "lam_end"})
    with pytest.raises(ValueError, match="lam_schedule"):
        settings(lam_schedule="cosine")
    with pytest.raises(ValueError, match="rlsd.loss.eps_w must be"):
        settings(loss={"eps_w": 1.5})
    s = settings(loss={"lam": 0.5, "negative_only": True}, lam_warmup_steps=4)
    assert [s.lam_at(k) for k in range(3)] == [lam_at(k, 0.5, "warmup-decay", 0.0, 50, 4) for k in range(3)]
    assert s.options_at(1) == RLSDOptions(lam=s.lam_at(1), negative_only=True)


@pytest.mark.parametrize("prompt,reference,template,want", CHAT_PROMPTS)
def test_teacher_messages_of_the_batch_rows(prompt, reference, template, want):
    """Each row's teacher prompt, as the library's builder writes it (the last user turn)."""
    from verl import DataProto
    column = lambda *values: np.array(list(values) + [None], dtype=object)[:-1]  # noqa: E731 (1-D of objects)
    batch = DataProto.from_dict(tensors={"x": torch.zeros(1)},
                                non_tensors={"raw_prompt": column(prompt), "hint": column(reference)})
    assert teacher_messages(batch, "hint", template) == [want]
    with pytest.raises(KeyError, match="no 'privileged' column"):
        teacher_messages(batch, "privileged")


class InProcessGroup:
    """The worker group of one in-process worker: veRL's RPCs become plain calls."""

    def __init__(self, worker):
        self.worker = worker

    def __getattr__(self, name):
        return getattr(self.worker, name)


def fit_batch(tok, worker, responses, advantages):
    """A batch as ``RayPPOTrainer.fit`` has it at the actor update: padded prompt + response tensors,
    pi_old from the actor (so rho = 1), advantages, and the dataset's columns."""
    messages = [[{"role": "user", "content": p}] for p in PROMPTS for _ in range(2)]
    contexts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
                for m in messages]
    batch = padded_proto(contexts, responses, tok.pad_token_id)
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
    old = no_padding_2_padding(tu.get(worker.compute_log_prob(td), "log_probs"), td).float()
    mask = batch.batch["response_mask"]
    batch.batch["old_log_probs"] = old
    batch.batch["advantages"] = torch.tensor(advantages)[:, None] * mask
    column = np.empty(len(messages), dtype=object)
    column[:] = messages
    batch.non_tensor_batch["raw_prompt"] = column
    batch.non_tensor_batch["privileged"] = np.array([r for r in REFERENCES for _ in range(2)], dtype=object)
    return batch, old, mask


def hf_logprobs(model, contexts, responses):
    """log softmax of the model's logits at each response token, one sequence at a time."""
    out = []
    for c, r in zip(contexts, responses):
        ids = torch.tensor([c + r])
        with torch.no_grad():
            logits = model(ids).logits[0, len(c) - 1:-1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1))
    return out


def test_update_actor_runs_the_teacher_pass_and_the_schedule(cpu_process_group, tmp_path):  # noqa: F811
    model, tok, _ = tiny_model_dir(tmp_path)
    tok.chat_template = CHAT
    tok.save_pretrained(tmp_path / "model")
    arr = verl_config(str(tmp_path / "model"), "token-mean")
    worker = RLSDActorRolloutRefWorker(arr, role="actor")
    worker.init_model()
    g = torch.Generator().manual_seed(3)
    responses = [torch.randint(3, len(tok), (n,), generator=g).tolist() for n in (4, 6, 2, 5)]
    batch, old, mask = fit_batch(tok, worker, responses, [1.0, -1.0, 0.5, -0.5])

    trainer = RLSDRayPPOTrainer.__new__(RLSDRayPPOTrainer)  # the driver's state that _update_actor reads
    trainer.config = OmegaConf.create({"actor_rollout_ref": OmegaConf.to_container(arr), "distillation": None})
    trainer.rlsd = settings(loss={"lam": 0.8}, lam_schedule="linear", lam_end=0.2, lam_decay_steps=4)
    trainer.tokenizer, trainer.actor_rollout_wg, trainer.global_steps = tok, InProcessGroup(worker), 3

    teacher_in = teacher_batch(tok, batch, "privileged")
    contexts = [tok.apply_chat_template(privileged_prompt([{"role": "user", "content": p}], ref), tokenize=True,
                                        add_generation_prompt=True, return_dict=False)
                for p, ref in zip(PROMPTS, REFERENCES) for _ in range(2)]
    assert teacher_in.batch["prompts"].shape[1] == max(map(len, contexts))
    want = hf_logprobs(model, contexts, responses)
    teacher = trainer._teacher_log_probs(batch)
    for i, w in enumerate(want):
        torch.testing.assert_close(teacher[i, :len(w)], w, rtol=1e-4, atol=1e-5)

    output = trainer._update_actor(batch)
    metrics = output.meta_info["metrics"]
    lam = lam_at(2, 0.8, "linear", 0.2, 4)
    assert metrics["rlsd/lam"] == pytest.approx(lam) and worker.rlsd_loss.lam == pytest.approx(lam)
    torch.testing.assert_close(batch.batch[TEACHER_KEY], teacher)
    # the loss saw this step's teacher column: delta = lp_T - lp in each micro-batch of two (lp = pi_old)
    delta = [(((teacher - old) * mask)[i:i + 2].sum() / mask[i:i + 2].sum()).item() for i in (0, 2)]
    (logged,) = metrics["actor/rlsd_delta_mean"]  # veRL logs the micro-batches' mean
    assert logged == pytest.approx(np.mean(delta), rel=1e-3, abs=1e-5)
    assert metrics["actor/ppo_kl"] == pytest.approx([0.0] * len(metrics["actor/ppo_kl"]), abs=1e-5)
