"""Finds credentials where they must never be: every log line of the test run (in-process
loggers and the servers' log files). tests/conftest.py fails a test whose logs carry one."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tests.support import auth

# API tokens, JWTs (three base64url segments, the first a JSON header), PEM private keys, and
# whatever follows a bearer scheme.
PATTERNS = re.compile(
    r"aft_[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|[Bb]earer\s+[A-Za-z0-9_.~+/-]{12,}"
)

found: list[str] = []


def scan(text: str, where: str) -> None:
    """Record every credential in `text` (by pattern, and every token the tests minted)."""
    hits = [m.group(0)[:24] + "…" for m in PATTERNS.finditer(text)]
    hits += [token[:24] + "…" for token in auth.MINTED if token in text]
    found.extend(f"{where}: {hit}" for hit in hits)


class LogScanner(logging.Handler):
    """Scans every record any logger of the test process emits, at every level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record that does not format: its parts, then
            text = f"{record.msg} {record.args}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        scan(text, f"log {record.name}")


def scan_file(path: Path) -> None:
    if path.exists():
        scan(path.read_text(errors="replace"), str(path.name))
