"""Loading a local Hugging Face causal LM, optionally with LoRA, and reaching its parts."""

from __future__ import annotations

import importlib.util

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


def pick_attention(name: str, device: torch.device) -> str:
    """``auto``: flash-attn 2 on CUDA where the package is installed, else PyTorch SDPA. Both keep
    attention memory linear in the sequence length when a batch has no padding."""
    if name == "auto":
        flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
        return "flash_attention_2" if flash else "sdpa"
    return name


def prepare_model(model, cfg: ModelConfig, device: torch.device):
    """Move to device/dtype, choose the attention kernel, wrap with LoRA if configured, enable
    gradient checkpointing (Hugging Face checkpoints only in training mode: the model is put in it)."""
    model = model.to(device=device, dtype=pick_dtype(cfg.dtype, device))
    model.set_attn_implementation(pick_attention(cfg.attn_implementation, device))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.train()
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


def check_length(model, length: int) -> None:
    """Refuse sequences longer than the config's ``max_position_embeddings`` (beyond it a model
    extrapolates its positions silently); raise that field, with rope scaling, to train longer."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise ValueError(f"a sequence of {length} tokens exceeds the model's max_position_embeddings "
                         f"({limit}); raise it in the model config (with rope scaling, e.g. YaRN) to train on it")


def last_hidden_states(model, input_ids, attention_mask):
    """Final-norm hidden states [B, L, H] from the decoder body: the LM head is never applied, so no
    [L, V] logits exist. Without padding the mask is dropped, so attention runs as a causal kernel
    (SDPA / flash) with no [L, L] mask."""
    check_length(model, input_ids.shape[1])
    if bool(attention_mask.all()):
        attention_mask = None
    return model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
