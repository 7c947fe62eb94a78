"""The ports the tests' servers are given: outside the range outgoing connections draw from."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import grpc_helpers
from tests.support.grpc_helpers import free_port


def test_a_free_port_is_below_the_ephemeral_range_and_free() -> None:
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_low = int(range_file.read_text().split()[0]) if range_file.exists() else 32768
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40  # (chosen at random, not handed out in order)
    for port in ports:
        assert port < ephemeral_low
        with socket.socket() as s:
            s.bind(("", port))


def test_a_port_in_use_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # (the generator's first answer is the taken port; the next one is another)
        answers: Iterator[int] = iter([port, port + 1 if port + 1 < 65536 else port - 1])

        class Scripted(random.Random):
            def randrange(self, *_: object, **__: object) -> int:  # (scripted)
                return next(answers)

        monkeypatch.setattr(grpc_helpers, "_random", Scripted())
        assert free_port() != port


def test_seeding_the_module_generator_does_not_repeat_the_ports() -> None:
    random.seed(7)
    first = [free_port() for _ in range(5)]
    random.seed(7)
    assert [free_port() for _ in range(5)] != first
