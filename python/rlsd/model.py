"""Loading a local Hugging Face causal LM, optionally with LoRA, and reaching its parts."""

from __future__ import annotations

import torch

from .config import ModelConfig


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the device computes in it natively (a CUDA GPU that supports it), else float32."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def prepare_model(model, cfg: ModelConfig, device: torch.device):
    """Move to device/dtype, wrap with LoRA if configured, enable gradient checkpointing."""
    model = model.to(device=device, dtype=pick_dtype(cfg.dtype, device))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model
        lora = cfg.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    return model


def load_model(cfg: ModelConfig, device: torch.device):
    """(model, tokenizer) from the local directory ``cfg.path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(cfg.path)
    model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=torch.float32)
    return prepare_model(model, cfg, device), tokenizer


def lm_head(model):
    """(weight [V, H], bias [V] or None) of the output projection."""
    head = model.get_output_embeddings()
    return head.weight, head.bias


def last_hidden_states(model, input_ids, attention_mask):
    """Final-norm hidden states [B, L, H] from the decoder body: the LM head is never applied."""
    return model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
