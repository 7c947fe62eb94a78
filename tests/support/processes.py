"""Other processes as Linux's /proc shows them: for tests that kill a process and check what
became of its children."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the process name (which may hold spaces and ')')."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether a process runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return _stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def parent_of(pid: int) -> int:
    return int(_stat(pid)[1])


def children(pid: int) -> list[int]:
    """A process's children (each of its threads' list)."""
    return sorted(
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    )
