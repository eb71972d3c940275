"""GPT-2 written out layer by layer, so that every Linear layer LoRA will wrap has a name.

The structure follows the course's seed code: separate ``W_query``/``W_key``/``W_value``
projections, a feed-forward block, two LayerNorms per block, ``final_norm`` and an ``out_head`` of
its own. Hugging Face checkpoints load into it through :mod:`course_lib.weights`, which ties
``out_head.weight`` to ``tok_emb.weight`` as GPT-2 does (the classifier's new head is untied again).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

Config = dict[str, Any]


class MultiHeadAttention(nn.Module):
    """Causal self-attention with one Linear layer per projection (query, key, value, output).

    ``context_length`` stays in the signature of the course's seed code; no mask buffer is stored, since
    the attention kernel masks the future positions itself (``is_causal``).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"emb_dim ({d_out}) must be divisible by n_heads ({num_heads}).")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)  # on the attention weights, while training

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.attend(*self.project(x)))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values of (batch, tokens, d_in) inputs."""
        return self.W_query(x), self.W_key(x), self.W_value(x)

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward` gives at one position per row, (batch, 1, d_out): the query of
        ``positions`` (a (batch,) long tensor) attending to the keys up to it. The keys and values
        need every position; the output projection only the ones read."""
        queries, keys, values = self.project(x)
        rows = torch.arange(x.shape[0], device=x.device)
        b, t, _ = keys.shape
        visible = torch.arange(t, device=x.device) <= positions[:, None]  # (batch, tokens): the causal mask's row
        context = nn.functional.scaled_dot_product_attention(
            self._split_heads(queries[rows, positions].unsqueeze(1)), self._split_heads(keys),
            self._split_heads(values), attn_mask=visible[:, None, None, :],
            dropout_p=self.dropout.p if self.training else 0.0)
        return self.out_proj(context.transpose(1, 2).reshape(b, 1, self.d_out))

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Causal attention of (batch, tokens, d_out) queries, keys and values, heads split and merged back.

        ``scaled_dot_product_attention`` computes softmax(q kᵀ / √head_dim, future positions masked) v in
        one fused kernel: the same numbers as writing the scores, mask and softmax out (a test compares
        them), without materialising each intermediate.
        """
        b, t, _ = queries.shape
        context = nn.functional.scaled_dot_product_attention(
            self._split_heads(queries), self._split_heads(keys), self._split_heads(values),
            dropout_p=self.dropout.p if self.training else 0.0, is_causal=True)
        return context.transpose(1, 2).reshape(b, t, self.d_out)


class LayerNorm(nn.Module):
    """LayerNorm with GPT-2's names: ``scale`` and ``shift`` (the checkpoint's g and b)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scale · (x − mean) / √(biased var + eps) + shift over the last dimension, as one fused kernel
        return nn.functional.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GELU with the tanh approximation GPT-2 was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Two Linear layers around a GELU, widening the embedding four times."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention and feed-forward, each with a shortcut."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s output at one position per row, (batch, 1, emb_dim), for the cost of those
        rows (plus the keys and values of all positions, which attention reads)."""
        rows = torch.arange(x.shape[0], device=x.device)
        x = x[rows, positions].unsqueeze(1) + self.drop_shortcut(self.att.forward_at(self.norm1(x), positions))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """GPT-2: token and position embeddings, ``n_layers`` blocks, final norm, output head."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        missing = [k for k in REQUIRED_CFG_KEYS if k not in cfg]
        if missing:
            raise KeyError(f"The model config is missing {missing}; build it with settings_to_cfg() "
                           "or get_config(), e.g. get_config('gpt2-small (124M)').")
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor, read_at: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, tokens, vocab) logits of (batch, tokens) token ids.

        ``read_at`` (a (batch,) long tensor of positions, optional) asks for the logits at those positions
        only, (batch, 1, vocab): the same numbers (up to the last digits), for less work, since the last
        block then computes its attention output and feed-forward for the positions read alone. A
        classifier reads one position per message (:func:`course_lib.training.classifier_logits`).
        """
        _, seq_len = in_idx.shape
        if seq_len > self.cfg["context_length"]:
            raise ValueError(f"The input has {seq_len} tokens but the model's context length is "
                             f"{self.cfg['context_length']}; truncate the input first.")
        positions = torch.arange(seq_len, device=in_idx.device)
        x = self.tok_emb(in_idx) + self.pos_emb(positions)
        x = self.drop_emb(x)
        if read_at is None:
            x = self.trf_blocks(x)
        else:
            for block in self.trf_blocks[:-1]:
                x = block(x)
            x = self.trf_blocks[-1].forward_at(x, read_at.to(x.device))
        x = self.final_norm(x)
        return self.out_head(x)


REQUIRED_CFG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                     "drop_rate", "qkv_bias")


def count_model_parameters(model: nn.Module, tied: bool = False) -> int:
    """All parameters of ``model``; with ``tied=True`` the output head is counted as the token
    embedding it shares weights with (how GPT-2's "124M" is counted)."""
    total = sum(p.numel() for p in model.parameters())  # shared tensors are counted once
    head, emb = getattr(model, "out_head", None), getattr(model, "tok_emb", None)
    if tied and head is not None and emb is not None and head.weight is not emb.weight:
        total -= head.weight.numel()
    return total
