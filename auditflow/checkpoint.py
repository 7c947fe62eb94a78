"""SQLite's write-ahead log copied back into the database on a thread of its own.

By default SQLite checkpoints inside the commit that takes the log past 1,000 pages: that
commit copies the log into the database file and syncs it before it returns, and every
request in its batch (an Approve among them) waits for it. A principal storing large plans
crosses that threshold every few commits. So the service's connections never checkpoint
(`wal_autocheckpoint=0`, `auditflow.db`), and a `Checkpointer` with its own connection runs a
PASSIVE checkpoint (it never blocks a writer or a reader, and leaves what it cannot copy yet
for the next time) whenever the log holds `wal_bytes` not yet copied, and at least every
`every` seconds while it holds any. Once the log is fully copied, the next commit starts it
again from its beginning; `journal_size_limit` bounds the file it leaves behind.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

WAL_BYTES = 4 * 1024 * 1024
EVERY = 2.0
LOOK = 0.05  # seconds between looks at the log's size (a read of the wal-index header)

# The wal-index header (https://sqlite.org/walformat.html, "The WAL-Index Header"), in the
# host's byte order: the page size at offset 14 (1 means 65,536), the last valid frame at
# 16; the checkpoint information at 96 begins with the frames already copied (nBackfill).
_PAGE_SIZE = struct.Struct("=H")
_FRAME = struct.Struct("=I")
_HEADER_BYTES = 100


class LogIndex:
    """The wal-index header of one SQLite file, read through one descriptor kept open.

    Why kept open: closing any descriptor of a file drops every POSIX lock the process holds
    on it, SQLite's own included. Opening and closing the -shm file at each look dropped the
    shared lock by which this process's connections tell other processes that the index is in
    use; the next process to connect (a page worker) then took the index for unused, truncated
    and rebuilt it under the running writer, which died of SIGBUS (or read a rebuilt index).
    So the descriptor is opened once and closed only after the process's connections are
    closed (`close`); a -shm file replaced by a new one (a new inode) is opened again, and
    the old descriptor's close drops only the locks on the old file."""

    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}-shm")
        self._fd: int | None = None

    def pending_bytes(self) -> int:
        """About how many bytes of the log are not yet copied into the database (0 when it has
        no wal-index). Read without a lock: a torn read only moves a checkpoint a little."""
        fd = self._current()
        if fd is None:
            return 0
        header = os.pread(fd, _HEADER_BYTES, 0)
        if len(header) < _HEADER_BYTES:
            return 0
        page_size = int(_PAGE_SIZE.unpack_from(header, 14)[0])
        last_frame = int(_FRAME.unpack_from(header, 16)[0])
        copied = int(_FRAME.unpack_from(header, 96)[0])
        return max(0, last_frame - copied) * (65_536 if page_size == 1 else page_size)

    def close(self) -> None:
        """Close the descriptor: only once this process's connections to the file are closed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _current(self) -> int | None:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return None
        if self._fd is not None and os.fstat(self._fd).st_ino != inode:
            self.close()  # (the old file's: this process's locks on the new one stay)
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return self._fd


class Checkpointer:
    """Checkpoints one SQLite file's log from a thread; `start()`, then `stop()`."""

    def __init__(self, database: Path, *, wal_bytes: int = WAL_BYTES, every: float = EVERY) -> None:
        self.database = database
        self.wal_bytes = wal_bytes
        self.every = every
        self.checkpoints = 0  # (for tests and benchmarks)
        self.looks = 0  # (for tests)
        self.log = LogIndex(database)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="db-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the log's descriptor: call once the process's own
        connections to the database are closed (see `LogIndex`)."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=10)
            self._thread = None
        self.log.close()

    def _run(self) -> None:
        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            last = time.monotonic()
            while not self._stopping.wait(LOOK):
                pending = self.log.pending_bytes()
                self.looks += 1
                if pending >= self.wal_bytes or (pending and time.monotonic() - last >= self.every):
                    self._checkpoint(conn)
                    last = time.monotonic()
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # (a busy or vanished file: the next look tries again)
            logger.warning("a checkpoint of %s failed: %s", self.database, exc)
            return
        self.checkpoints += 1
