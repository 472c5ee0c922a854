"""The embedded demo: a character tokenizer, a tiny Qwen3 built from a config, a synthetic
verifiable arithmetic task, a supervised warm start, and GRPO / OPSD / RLSD runs compared."""
