"""SQLite done once: per-thread connections, fast lock retries, and group commit for the hot path."""

from __future__ import annotations

import queue
import random
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

Work = Callable[[sqlite3.Connection], Any]


class StorageError(Exception):
    """The storage cannot be used (disk full, locked for too long, unreadable)."""


class Database:
    """One SQLite file in WAL mode, shared by the threads of a process and by other processes."""

    def __init__(self, path: Path | str, *, schema: str = "", synchronous: str = "full",
                 lock_timeout: float = 5.0, max_batch: int = 64):
        self.path = str(path)
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self.max_batch = max_batch
        self._local = threading.local()
        self._batch_queue: queue.SimpleQueue | None = None
        self._batch_lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if schema:
            try:
                self.conn().executescript(schema)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open storage {self.path}: {exc}") from None

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # timeout=0: a busy database answers at once and _begin retries within microseconds,
            # instead of SQLite's default handler sleeping 1, 2, 5 … 100 ms between tries.
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            conn.execute("pragma journal_mode=wal")
            conn.execute(f"pragma synchronous={self.synchronous}")
            self._local.conn = conn
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0001
        while True:
            try:
                conn.execute("begin immediate")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.005)

    def tx(self, work: Work) -> Any:
        """Run ``work(conn)`` in one write transaction; sqlite errors become StorageError."""
        try:
            conn = self.conn()  # inside the try: a lazily opened connection can fail too
            self._begin(conn)
            try:
                out = work(conn)
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
            return out
        except sqlite3.Error as exc:
            raise StorageError(f"storage error in {Path(self.path).name}: {exc}") from None

    def batched_tx(self, work: Work) -> Any:
        """Like ``tx`` but committed together with concurrent callers (one fsync for many).

        A single writer thread per process takes whatever is waiting, runs the pieces in one
        transaction and commits once; if any piece fails, each is run again on its own.
        """
        if self._batch_queue is None:
            with self._batch_lock:
                if self._batch_queue is None:
                    q: queue.SimpleQueue = queue.SimpleQueue()
                    threading.Thread(target=self._writer, args=(q,), daemon=True, name="sqlite-writer").start()
                    self._batch_queue = q
        fut: Future = Future()
        self._batch_queue.put((work, fut))
        return fut.result()

    def _writer(self, q: queue.SimpleQueue) -> None:
        while True:
            batch = [q.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[tuple[Work, Future]]) -> None:
        try:
            conn = self.conn()
            self._begin(conn)
            try:
                results = [work(conn) for work, _ in batch]
                conn.execute("commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
        except Exception:
            # Something in the batch failed: nothing was committed. Run each piece in its own
            # transaction so one bad piece fails alone (rare; the fast path has no savepoints).
            for work, fut in batch:
                try:
                    fut.set_result(self.tx(work))
                except Exception as exc:
                    fut.set_exception(exc)
            return
        for (_, fut), value in zip(batch, results):
            fut.set_result(value)
