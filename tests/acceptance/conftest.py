from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import launched
from tests.support.cluster import Pair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """Processor + gateway as subprocesses; short cycle delay and lease for quick tests."""
    started = Pair(
        tmp_path,
        processor_args=["--cycle-delay", "0.05", "--lease-seconds", "2", "--poll-interval", "0.2"],
        gateway_args=["--heartbeat-interval", "1"],
    ).start()
    yield started
    started.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium for the page's tests."""
    with launched() as started:
        yield started
