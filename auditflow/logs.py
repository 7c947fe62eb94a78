"""Logging set-up for the servers and the CLI."""

from __future__ import annotations

import logging


def setup(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
