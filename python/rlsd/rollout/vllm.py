"""Rollouts with an in-process vLLM engine; the trainer's weights are pushed to it after every step.

The engine starts from a copy of the model saved to a temporary directory. Log-probs are taken in
vLLM's ``processed_logprobs`` mode, i.e. after temperature, so they equal the trainer's
``log softmax(z / tau)[y]``. Run with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` to keep the engine in
this process (the CPU build binds its OpenMP threads; ``VLLM_CPU_OMP_THREADS_BIND`` chooses the
cores). Full-weight models only: a LoRA-wrapped model would need its adapters merged first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

from . import Rollout


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
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        options = {"dtype": dtype, "seed": 0, "enforce_eager": True, "logprobs_mode": "processed_logprobs",
                   "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 256 << 20,
                   "max_model_len": max_model_len or min(model.config.max_position_embeddings, 4096),
                   **llm_options}
        self.llm = LLM(model=self.dir, tokenizer=self.dir, **options)

    def sync(self, model) -> None:
        """Push the trainer's current weights into the engine (in place, no restart)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(model.state_dict().items())})

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
