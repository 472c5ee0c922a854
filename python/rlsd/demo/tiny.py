"""A character-level tokenizer and a tiny Qwen3 model, both built in code (nothing downloaded)."""

from __future__ import annotations

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def char_tokenizer(alphabet: str):
    """A ``PreTrainedTokenizerFast`` with one id per character of ``alphabet`` plus pad/eos/unk."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *dict.fromkeys(alphabet)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def tiny_qwen3(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 2, head_dim: int = 64,
               ffn: int = 512, max_len: int = 128, seed: int = 0, pad_id: int = 0, eos_id: int = 1):
    """A small Qwen3 causal LM with tied embeddings (head_dim 64: what vLLM's CPU attention needs)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=head_dim, max_position_embeddings=max_len, tie_word_embeddings=True,
                         pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
