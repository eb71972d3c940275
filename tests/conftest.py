import socket

import pytest
from support import MIRROR


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails inside the test."""
    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def mirror(monkeypatch):
    """The offline mirror (``COURSE_MIRROR``, else ``../shared/mirror``), set as ``COURSE_MIRROR``; the test
    is skipped, saying what to set, when there is none."""
    if not MIRROR.is_dir():
        pytest.skip(f"no offline mirror at {MIRROR}: set COURSE_MIRROR to one (CI does)")
    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR.resolve()))
    return MIRROR.resolve()
