"""Packing (context, response) token lists into tensors and gathering response-position states.

A sequence is ``context + response``, right-padded. The hidden state at position
``len(context) - 1 + t`` predicts response token ``t``; those rows form the [B, T, H] input of
the fused loss, with targets = the response tokens and mask = 1 on real tokens.
"""

from __future__ import annotations

import torch

from .model import last_hidden_states


def pack(contexts: list, responses: list, pad_id: int, device=None):
    """input_ids, attention_mask [B, L]; positions, targets, mask [B, T] (T = longest response)."""
    B = len(contexts)
    L = max(len(c) + len(r) for c, r in zip(contexts, responses))
    T = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    targets = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (c, r) in enumerate(zip(contexts, responses)):
        n, m = len(c), len(r)
        input_ids[i, :n + m] = torch.tensor(list(c) + list(r), dtype=torch.long)
        attention[i, :n + m] = 1
        positions[i, :m] = torch.arange(n - 1, n - 1 + m)
        targets[i, :m] = torch.tensor(r, dtype=torch.long)
        mask[i, :m] = 1.0
    return [t.to(device) for t in (input_ids, attention, positions, targets, mask)]


def response_hidden(model, contexts: list, responses: list, pad_id: int, device=None, body=None):
    """(hidden [B, T, H] at the positions predicting the response tokens, targets [B, T], mask [B, T]).
    ``body(input_ids, attention_mask)``, if given, replaces the model's decoder pass (the DDP-wrapped student)."""
    input_ids, attention, positions, targets, mask = pack(contexts, responses, pad_id, device)
    h = body(input_ids, attention) if body is not None else last_hidden_states(model, input_ids, attention)
    hidden = torch.gather(h, 1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    return hidden, targets, mask


def micro_batches(lengths: list, max_sequences: int, max_tokens: int = 0) -> list:
    """Index lists of the micro-batches. ``max_tokens`` 0: consecutive slices of ``max_sequences``.
    Otherwise sorted by length, longest first, and filled while (sequences x longest) stays within
    ``max_tokens`` padded tokens (and ``max_sequences``); a longer sequence goes alone."""
    if max_tokens <= 0:
        return [list(range(i, min(i + max_sequences, len(lengths)))) for i in range(0, len(lengths), max_sequences)]
    out, current = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1 > max_sequences or (len(current) + 1) * longest > max_tokens):
            out.append(current)
            current = []
        current.append(i)
    return out + [current] if current else out


def pad_values(rows: list, T: int, device=None) -> torch.Tensor:
    """Right-pad lists of floats (e.g. rollout log-probs) with zeros into a [B, T] float32 tensor."""
    out = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out.to(device)
