"""Checks that hold for the whole suite: no credential ever reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support import secrets

_scanner = secrets.LogScanner(level=logging.DEBUG)
logging.getLogger().addHandler(_scanner)


@pytest.fixture(autouse=True)
def no_credential_in_any_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every record at every level is scanned (caplog lowers the level to DEBUG so that debug
    lines are made at all); a test whose logs, or its servers' log files, carry a token fails."""
    caplog.set_level(logging.DEBUG)
    before = len(secrets.found)
    yield
    new = secrets.found[before:]
    if new:
        pytest.fail("credentials in the logs:\n" + "\n".join(new[:10]), pytrace=False)
