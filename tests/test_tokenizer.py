import socket

import pytest

from course_lib import tokenizer as tok


def test_hello_world_encodes_to_gpt2_ids_with_sockets_blocked(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # no cached copy to lean on
    tok.get_tokenizer.cache_clear()
    with pytest.raises(OSError):
        socket.create_connection(("example.org", 80))  # the block is really in place
    enc = tok.get_tokenizer()
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode(enc.encode("LoRA fine-tuning")) == "LoRA fine-tuning"
