"""The servers' logging: a log call queues its record and returns; a thread of its own writes
it (a caller on the event loop never waits for stderr), and what is queued is written when
logging shuts down."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from auditflow import logs


class _HeldStream(io.StringIO):
    """stderr that a slow reader holds: every write waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        assert self.release.wait(30), "never released"
        return super().write(text)


@pytest.fixture
def held() -> Iterator[_HeldStream]:
    """The stream, and the root logger as it was, restored after the test."""
    stream = _HeldStream()
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    yield stream
    stream.release.set()
    for handler in root.handlers:
        handler.close()
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def test_a_log_call_returns_while_stderr_is_held_and_the_record_is_written_later(
    held: _HeldStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stderr", held)  # (in the test: pytest sets its own before each phase)
    logs.setup("info", "json", service="gateway")
    logger = logging.getLogger("auditflow.test")
    logs.bind(workflow_id="wf_1")  # (bound where the call is made, not where it is written)
    logger.info("first %s", "record")
    assert held.writing.wait(10), "the writer thread never wrote"
    returned = threading.Event()

    def log_more() -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception("second")
        returned.set()

    caller = threading.Thread(target=log_more)
    caller.start()
    assert returned.wait(5), "a log call waited for stderr"
    held.release.set()
    caller.join()
    for handler in logging.getLogger().handlers:
        handler.close()  # (as logging.shutdown at exit: writes what is queued)
    lines = [json.loads(line) for line in held.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["first record", "second"]
    assert lines[0]["workflow_id"] == "wf_1" and lines[0]["service"] == "gateway"
    assert "ZeroDivisionError" in lines[1]["exc_info"]
