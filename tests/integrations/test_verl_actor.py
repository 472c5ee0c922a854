"""The ``rlsd`` policy loss inside veRL 0.9.1's actor, run on the CPU, against the thin trainer.

veRL 0.9.1 has no ``DataParallelPPOActor`` any more: the actor's policy update is
``ActorRolloutRefWorker.update_actor`` -> ``TrainingWorker.train_mini_batch`` -> ``FSDPEngine``
(``forward_backward_batch``: the model's forward, ``losses.ppo_loss``, the policy loss from the
registry, backward per micro-batch; ``optimizer_step``: grad clip and AdamW). This test builds that
worker from veRL's own Hydra config (``ppo_trainer``, ``actor.strategy=fsdp2``,
``actor.policy_loss.loss_mode=rlsd``) around a tiny Qwen3 saved from a config, computes the
teacher's log-probs with the worker's own ``compute_log_prob`` on the privileged prompts, and runs
one ``update_actor`` on a batch laid out as veRL's trainer hands it over (``DataProto`` ->
``left_right_2_no_padding``). The thin trainer's ``Trainer.update`` (live teacher, same old
log-probs, same advantages, same micro-batches) on the same batch from the same weights must give
the same loss, gradient norm, gradients and AdamW step: with one rank, and with two ranks (gloo,
parameters sharded by FSDP2, each rank with its contiguous half of the batch as veRL's dispatch
hands it out).

Not run, because veRL 0.9.1 needs a GPU or Ray for it: the Ray worker group (the worker is
called in-process on each rank), the rollout engine (vLLM/SGLang), and veRL's device platform
(veRL registers only CUDA/NPU/ROCm platforms; ``CPUPlatform`` below is registered through veRL's
platform plugin registry so that device calls go to the CPU).
"""

import contextlib
import copy
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

pytest.importorskip("verl", reason="verl is not installed: run these tests in .venv-verl (make verl-env)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from processes import free_port  # noqa: E402
from trainer_helpers import make_config  # noqa: E402
from rlsd.demo.task import ALPHABET  # noqa: E402
from rlsd.demo.tiny import char_tokenizer, tiny_qwen3  # noqa: E402
from rlsd.loop import Sample, Trainer  # noqa: E402
from rlsd_kernels.integrations.verl import TEACHER_KEY, register, with_teacher  # noqa: E402

LR, CLIP, LAM = 1e-2, 1.0, 0.7


def cpu_platform():
    """veRL's device platform for the CPU, registered under veRL's plugin API."""
    from verl.plugin.platform.platform_base import PlatformBase

    memory = ModuleType("cpu_device")  # the device-module calls veRL makes, as no-ops / zero memory
    for name in ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved"):
        setattr(memory, name, lambda *a: 0)
    memory.mem_get_info = lambda *a: (0, 0)
    memory.empty_cache = memory.synchronize = memory.set_device = lambda *a: None
    memory.is_available = lambda: False
    memory.get_device_name = lambda *a: "CPU"

    class CPUPlatform(PlatformBase):
        device_name, vendor_name, device_module = "cpu", "cpu", memory

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"

        def device_count(self):
            return 1

        def set_device(self, device_index):
            pass

        def synchronize(self, device_index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        manual_seed_all = manual_seed

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, device_index=0):
            return None, None

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextlib.contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        profiler_stop = profiler_start

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None

    return CPUPlatform()


def init_cpu_rank(rank, world_size, port):
    """This process as rank ``rank`` of a gloo group, with veRL on the CPU platform. Returns the
    platform it replaced."""
    from verl.plugin.platform import platform_manager

    # VERL_ENGINE_DEVICE: veRL's override of the engine lookup (FSDPEngineWithLMHead is registered for cuda/npu)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), VERL_ENGINE_DEVICE="cuda")
    saved = platform_manager._current_platform
    platform_manager.set_platform(cpu_platform())
    torch.distributed.init_process_group("gloo")
    return saved


@pytest.fixture
def cpu_process_group():
    from verl.plugin.platform import platform_manager

    saved = init_cpu_rank(0, 1, free_port())
    yield
    torch.distributed.destroy_process_group()
    platform_manager._current_platform = saved


def batch(vocab):
    """Four responses to two prompts: contexts, privileged contexts, responses, rollout log-probs,
    advantages."""
    g = torch.Generator().manual_seed(5)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts = [ids(5), ids(3)]
    privileged = [p + ids(4) for p in prompts]
    lengths = [4, 6, 2, 5]
    responses = [ids(n) for n in lengths]
    old = [(-3.1 + 0.4 * torch.randn(n, generator=g)).tolist() for n in lengths]  # log(1/22) = -3.09
    return ([prompts[i // 2] for i in range(4)], [privileged[i // 2] for i in range(4)], responses, old,
            [1.0, -1.0, 0.5, -0.5])


def padded_proto(contexts, responses, pad, **columns):
    """Left-padded prompts and right-padded responses as a DataProto, as veRL's rollout returns them;
    ``columns`` are [B, R] float tensors (old log-probs, ...)."""
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    B, P, R = len(contexts), max(map(len, contexts)), max(map(len, responses))
    prompts, responses_t = torch.full((B, P), pad), torch.full((B, R), pad)
    attention, response_mask = torch.zeros(B, P + R, dtype=torch.long), torch.zeros(B, R, dtype=torch.long)
    for i, (c, r) in enumerate(zip(contexts, responses)):
        prompts[i, P - len(c):], responses_t[i, :len(r)] = torch.tensor(c), torch.tensor(r)
        attention[i, P - len(c):P + len(r)], response_mask[i, :len(r)] = 1, 1
    tensors = dict(prompts=prompts, responses=responses_t, input_ids=torch.cat([prompts, responses_t], 1),
                   attention_mask=attention, position_ids=compute_position_id_with_mask(attention),
                   response_mask=response_mask, **columns)
    return DataProto.from_dict(tensors=tensors, meta_info={"temperature": 1.0})


def verl_batch(contexts, responses, pad, **columns):
    """The actor's input as veRL's trainer builds it: :func:`padded_proto`, then ``left_right_2_no_padding``."""
    from verl.workers.utils.padding import left_right_2_no_padding

    return left_right_2_no_padding(padded_proto(contexts, responses, pad, **columns).to_tensordict())


def padded(rows, R):
    out = torch.zeros(len(rows), R)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


def verl_config(model_dir, loss_agg):
    from hydra import compose, initialize_config_dir
    import verl.trainer.config as config_pkg

    actor = "actor_rollout_ref.actor"
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.model.use_remove_padding=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"{actor}.strategy=fsdp2", f"{actor}.policy_loss.loss_mode=rlsd", f"{actor}.loss_agg_mode={loss_agg}",
        f"{actor}.ppo_mini_batch_size=4", f"{actor}.ppo_micro_batch_size_per_gpu=2", f"{actor}.ppo_epochs=1",
        f"{actor}.clip_ratio_low=0.2", f"{actor}.clip_ratio_high=0.28", f"{actor}.use_kl_loss=False",
        f"{actor}.entropy_coeff=0", f"{actor}.optim.lr={LR}", f"{actor}.optim.weight_decay=0.01",
        f"{actor}.optim.clip_grad={CLIP}", f"{actor}.fsdp_config.use_torch_compile=False",
        f"+{actor}.fsdp_config.mixed_precision={{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}}",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    ]
    with initialize_config_dir(config_dir=os.path.dirname(config_pkg.__file__), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides).actor_rollout_ref


def verl_update(model_dir, loss_agg, rank=0, world_size=1):
    """One ``update_actor`` of veRL's actor worker on this rank's share of the batch (veRL's dispatch
    gives data-parallel rank r the r-th contiguous chunk); returns (metrics, grads, params)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import no_padding_2_padding

    torch.set_num_threads(1)
    worker = ActorRolloutRefWorker(verl_config(model_dir, loss_agg), role="actor")
    worker.init_model()
    worker.actor.set_loss_fn(with_teacher(worker.loss_fn))
    tok = char_tokenizer(ALPHABET)
    share = 4 // world_size
    contexts, privileged, responses, old, adv = (x[rank * share:(rank + 1) * share] for x in batch(len(tok)))
    R = max(map(len, responses))
    teacher_batch = verl_batch(privileged, responses, tok.pad_token_id)
    tu.assign_non_tensor(teacher_batch, calculate_entropy=False, compute_loss=False)
    teacher_lp = no_padding_2_padding(worker.compute_log_prob(teacher_batch)["log_probs"], teacher_batch)
    data = verl_batch(contexts, responses, tok.pad_token_id, old_log_probs=padded(old, R),
                      advantages=torch.tensor(adv)[:, None].expand(-1, R).contiguous(), **{TEACHER_KEY: teacher_lp})
    tu.assign_non_tensor(data, calculate_entropy=False, distillation_use_topk=False, distillation_only=False,
                         global_batch_size=4, mini_batch_size=4, epochs=1, seed=1,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    engine, grads = worker.actor.engine, {}
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    # the engine zeroes the gradients when it leaves train mode: keep the (clipped) ones the optimizer steps on
    engine.optimizer.register_step_pre_hook(lambda *_: grads.update(
        {n: full(p.grad).clone() for n, p in engine.module.named_parameters()}))
    metrics = tu.get(worker.update_actor(data), "metrics")
    assert isinstance(engine.module, FSDPModule) and all(isinstance(p, DTensor) for p in engine.module.parameters())
    return metrics, grads, {n: full(p.detach()).clone() for n, p in engine.module.named_parameters()}


def verl_rank(rank, world_size, port, model_dir, loss_agg, out):
    init_cpu_rank(rank, world_size, port)
    try:
        register(lam=LAM, eps_w=0.2)
        result = verl_update(model_dir, loss_agg, rank, world_size)
        if rank == 0:
            torch.save(result, out)
    finally:
        torch.distributed.destroy_process_group()


def thin_trainer_update(model, tok, tmp_path, loss_agg):
    contexts, privileged, responses, old, adv = batch(len(tok))
    loss = {"lam": LAM, "kl_coef": 0.0, "eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0, "entropy_coef": 0.0}
    cfg = make_config(tmp_path, algo={"name": "rlsd", "loss": loss, "loss_agg": loss_agg},
                      train={"micro_batch_size": 2, "lr": LR, "grad_clip": CLIP, "weight_decay": 0.01,
                             "ppo_mini_batch_size": 0, "ppo_epochs": 1})
    trainer = Trainer(cfg, model, tok, [])
    samples = [Sample(c, t, r, lp, a, i // 2) for i, (c, t, r, lp, a) in
               enumerate(zip(contexts, privileged, responses, old, adv))]
    loss, metrics = trainer.update(samples)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss, metrics, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def tiny_model_dir(tmp_path):
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), hidden=64, layers=2, heads=1, head_dim=64, ffn=128, seed=0)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return model, tok, str(tmp_path / "model")


def assert_same_update(verl_result, thin_result):
    (metrics, grads, params), (loss, t_metrics, t_grads, t_params) = verl_result, thin_result
    (grad_norm,) = metrics["grad_norm"]  # one optimizer step
    assert grad_norm == pytest.approx(t_metrics["grad_norm"], rel=1e-5) and grad_norm > CLIP
    assert t_metrics["credit_clip_frac"] > 0 and t_metrics["ppo_clip_frac"] > 0
    for name, g in t_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    # AdamW's first step is lr g / (|g| + eps): where g is a near-cancelling sum, its float rounding
    # (within the gradient tolerance) moves the step by up to a few tenths of a percent of lr
    for name, p in t_params.items():
        torch.testing.assert_close(params[name], p, rtol=1e-5, atol=LR / 100, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_verl_actor_update_equals_thin_trainer(cpu_process_group, tmp_path, loss_agg):
    register(lam=LAM, eps_w=0.2)
    model, tok, model_dir = tiny_model_dir(tmp_path)
    result = verl_update(model_dir, loss_agg)
    thin = thin_trainer_update(model, tok, tmp_path, loss_agg)
    (pg_loss,) = result[0]["actor/pg_loss"]
    assert pg_loss == pytest.approx(thin[0], rel=1e-5)
    assert_same_update(result, thin)


def test_two_verl_actor_ranks_equal_thin_trainer(tmp_path):
    """veRL's data-parallel path: two ranks, parameters sharded by FSDP2, each with half the batch;
    the loss normalised by veRL's global token count (``batch_num_tokens``, ``dp_size``)."""
    model, tok, model_dir = tiny_model_dir(tmp_path)
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(verl_rank, args=(2, free_port(), model_dir, "token-mean", out), nprocs=2)
    assert_same_update(torch.load(out, weights_only=False), thin_trainer_update(model, tok, tmp_path, "token-mean"))
