"""A deadline for the request head (request line and headers).

The socket timeout bounds each silent wait, not a client that dribbles one byte just before
every timeout (slowloris): such a client would hold its thread for ever. One reaper thread
shuts the reading side of every connection whose head is overdue, so the handler's reads end.
"""
from __future__ import annotations

import socket
import threading
import time


class HeadTimer:
    def __init__(self, connection: socket.socket, deadline: float):
        self.connection = connection
        self.deadline = deadline
        self.expired = False


class HeadDeadlines:
    def __init__(self, seconds: float, check_interval: float = 0.25):
        self.seconds = seconds
        self.check_interval = check_interval
        self._timers: set[HeadTimer] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="head-deadlines", daemon=True)
        self._reaper.start()

    def arm(self, connection: socket.socket) -> HeadTimer:
        timer = HeadTimer(connection, time.monotonic() + self.seconds)
        with self._lock:
            self._timers.add(timer)
        return timer

    def disarm(self, timer: HeadTimer) -> None:
        with self._lock:
            self._timers.discard(timer)

    def close(self) -> None:
        self._stop.set()

    def _reap(self) -> None:
        while not self._stop.wait(self.check_interval):
            now = time.monotonic()
            with self._lock:
                overdue = [timer for timer in self._timers if timer.deadline <= now]
                self._timers.difference_update(overdue)
            for timer in overdue:
                timer.expired = True
                try:
                    # Reads now see end-of-file; the handler can still answer 408.
                    timer.connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
