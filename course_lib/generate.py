"""Text generation with a GPT model: greedy decoding, temperature sampling and top-k."""
from __future__ import annotations

import torch
from torch import nn


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode ``text`` into a batch of one: shape (1, n_tokens)."""
    ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode a (1, n_tokens) or (n_tokens,) tensor back into text."""
    return tokenizer.decode(token_ids.reshape(-1).tolist())


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx``.

    ``temperature == 0`` picks the most likely token (greedy); a positive temperature samples
    from softmax(logits / temperature), restricted to the ``top_k`` most likely tokens if given.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}.")
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        else:
            next_id = logits.argmax(dim=-1, keepdim=True)
        if eos_id is not None and bool((next_id == eos_id).all()):
            break
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx
