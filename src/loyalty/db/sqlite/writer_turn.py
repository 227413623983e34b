"""Turns at writing among the processes that share one SQLite file."""

from __future__ import annotations

import fcntl
import os
import threading


class WriterTurn:
    """Takes turns at writing among the processes that share a database file.

    SQLite's own busy handler sleeps up to 100 ms between tries, and polling a lock is no
    better: a writer that lets go and comes straight back often finds the lock still free
    and takes it again, so another worker's batch waits several rounds. A blocking
    advisory lock on a file beside the database is handed over by the kernel the moment it
    is let go. BEGIN IMMEDIATE still guards against writers that do not take turns.

    The wait blocks a thread, so its deadline is kept by the caller, who gives up with
    `give_up`; a turn that comes after that is let go at once.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._held = False
        self._mutex = threading.Lock()  # orders a late turn against the caller giving up

    def acquire(self, gave_up: threading.Event) -> bool:
        """Waits for the turn; False when the caller gave up waiting in the meantime."""
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        with self._mutex:
            if gave_up.is_set():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                return False
            self._held = True
            return True

    def give_up(self, gave_up: threading.Event) -> bool:
        """Ends a wait from the caller's side; False when the turn was already taken."""
        with self._mutex:
            if self._held:
                return False
            gave_up.set()
            return True

    def release(self) -> None:
        with self._mutex:
            if self._held and self._fd is not None:
                self._held = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)
