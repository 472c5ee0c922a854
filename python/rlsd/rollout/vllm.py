"""Rollouts with an in-process vLLM engine; the trainer's weights are pushed to it after every step.

The engine starts from a copy of the model saved to a temporary directory. Log-probs are taken in
vLLM's ``processed_logprobs`` mode, i.e. after temperature, so they equal the trainer's
``log softmax(z / tau)[y]``. Run with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` to keep the engine in
this process (the CPU build binds its OpenMP threads; ``VLLM_CPU_OMP_THREADS_BIND`` chooses the
cores). Full-weight models only: a LoRA-wrapped model would need its adapters merged first.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import weakref

from . import Rollout

PROMPT_TOKENS = 4096   # prompt length budgeted beside max_new_tokens when max_model_len is not given
KV_CACHE_MIN = 256 << 20


def engine_limits(config, dtype_bytes: int, max_new_tokens: int, max_model_len: int = 0) -> dict:
    """vLLM's ``max_model_len`` (prompt + response, at most the model's ``max_position_embeddings``)
    and a KV cache that holds at least one sequence of that length (vLLM refuses to start otherwise)."""
    length = max_model_len or min(config.max_position_embeddings, PROMPT_TOKENS + max_new_tokens)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    return {"max_model_len": length, "kv_cache_memory_bytes": max(KV_CACHE_MIN, int(1.1 * per_token * length))}


class VLLMEngine:
    def __init__(self, model, tokenizer, max_new_tokens: int = 256, max_model_len: int = 0, **llm_options):
        if hasattr(model, "peft_config"):
            raise NotImplementedError("the vLLM engine takes full-weight models; use rollout.engine 'hf' with LoRA")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.dir = tempfile.mkdtemp(prefix="rlsd-vllm-")
        weakref.finalize(self, shutil.rmtree, self.dir, True)
        model.save_pretrained(self.dir)
        tokenizer.save_pretrained(self.dir)
        param = next(model.parameters())
        options = {"dtype": str(param.dtype).replace("torch.", ""), "seed": 0, "enforce_eager": True,
                   "logprobs_mode": "processed_logprobs", "gpu_memory_utilization": 0.05,
                   **engine_limits(model.config, param.element_size(), max_new_tokens, max_model_len),
                   **llm_options}
        self.llm = LLM(model=self.dir, tokenizer=self.dir, **options)

    def sync(self, model) -> None:
        """Push the trainer's current weights into the engine (in place, no restart)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(model.state_dict().items())})

    def close(self) -> None:
        """Shut the engine down now (idempotent). Its core tears down the process groups it made; left
        to vLLM's finaliser at interpreter exit, that runs after the caller may have destroyed them and
        prints a ``ValueError: Invalid process group specified`` traceback on a successful run."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()

    def generate(self, prompts: list, n: int, max_new_tokens: int, temperature: float = 1.0, seed=None) -> list:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=n, temperature=temperature, top_k=0, top_p=1.0, min_p=0.0,
                                max_tokens=max_new_tokens, logprobs=0, seed=seed, stop_token_ids=[self.eos_id],
                                skip_special_tokens=True)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        groups = []
        for p, out in zip(prompts, outs):
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                group.append(Rollout(list(p), ids, lps, self.tokenizer.decode(ids, skip_special_tokens=True),
                                     c.finish_reason == "stop"))
            groups.append(group)
        return groups
