"""GPT-2's BPE tokenizer, built by tiktoken from files shipped inside course_lib (no network).

tiktoken's own ``get_encoding("gpt2")`` downloads these two files on first use; the course ships
OpenAI's copies (Modified MIT licence, beside them) so that it works offline.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

# The hashes tiktoken itself pins for the gpt2 encoding: a damaged copy is refused.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenisation pattern (tiktoken's r50k_pat_str).
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding: 50,257 tokens, ``<|endoftext|>`` = 50256."""
    folder = resources.files("course_lib") / "assets" / "gpt2_tokenizer"
    with resources.as_file(folder) as path:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(path / "vocab.bpe"),
            encoder_json_file=str(path / "encoder.json"),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=50257,
    )
