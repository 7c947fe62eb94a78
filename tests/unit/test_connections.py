"""Counting what a port holds (`CapWatch`): real sockets on a real port, the kernel's table."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from auditflow import connections
from auditflow.connections import CapWatch


def test_established_counts_the_connections_a_port_holds_and_no_other() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_server(("127.0.0.1", 0)) as other:
        port = listener.getsockname()[1]
        assert connections.established(port) == 0  # (listening is not a connection)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [listener.accept()[0] for _ in clients]
        elsewhere = socket.create_connection(other.getsockname())
        try:
            assert connections.established(port) == 3
        finally:
            for s in [*clients, *accepted, elsewhere]:
                s.close()


async def test_a_full_port_is_logged_once_per_interval_and_a_port_below_its_maximum_never(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "auditflow.connections")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        watch = CapWatch("127.0.0.1", port, cap=3, interval=0.05)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        watch.start()
        try:
            await asyncio.sleep(0.3)  # (six looks at a port below its maximum)
            assert not caplog.records
            clients.append(socket.create_connection(("127.0.0.1", port)))
            began = time.monotonic()
            while not caplog.records:
                assert time.monotonic() - began < 30, "no line for a full port"
                await asyncio.sleep(0.01)
        finally:
            await watch.stop()
            for s in clients:
                s.close()
    line = caplog.records[0].getMessage()
    assert line == (
        f"gRPC port 127.0.0.1:{port}: holds its maximum of 3 connections (--max-connections): "
        "new ones are closed at once"
    )
