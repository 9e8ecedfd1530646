"""``worker run --workers N``: N worker processes, each restarted when it dies.

The supervisor starts every worker in a session of its own, so a Ctrl-C in the terminal
reaches the supervisor only and each worker gets exactly the signal the supervisor passes on
(a terminal's SIGINT to the whole process group would otherwise count as the second, "stop at
once", signal in every worker). On SIGTERM or SIGINT it passes the signal to every worker and
waits for them to drain; a second signal is passed on too (the workers then stop at once).
Workers that are still running ``shutdown_timeout + KILL_GRACE`` seconds after the first
signal are killed. A worker that dies on its own is started again — at once if it had run
for ``STABLE_AFTER`` seconds, else after a delay that doubles up to ``MAX_RESTART_DELAY``, so
a worker that cannot start does not spin. Each worker watches the supervisor too and drains
and stops if the supervisor is killed.

The exit code is 0 when every worker exited 0 after the signal, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["SUPERVISOR_ENV", "WORKER_ENV", "Supervisor"]

log = logging.getLogger("eventbus.cli")

SUPERVISOR_ENV = "EVENTBUS_SUPERVISOR_PID"
"""Set in each worker's environment: the supervisor's pid, which the worker watches."""
WORKER_ENV = "EVENTBUS_WORKER"
"""Set in each worker's environment: its number, 1 to N (shown in its log lines)."""
KILL_GRACE = 10.0
STABLE_AFTER = 10.0
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
TICK = 0.1


@dataclasses.dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    quick_deaths: int = 0


class Supervisor:
    """Runs ``count`` copies of ``command`` (with ``env``) until SIGTERM or SIGINT."""

    def __init__(
        self, command: Sequence[str], count: int, env: dict[str, str], shutdown_timeout: float
    ) -> None:
        self.command = list(command)
        self.env = env
        self.shutdown_timeout = shutdown_timeout
        self.slots = [_Slot(number) for number in range(1, count + 1)]
        self._signals: list[int] = []

    def run(self) -> int:
        """Supervise until a signal, then stop the workers; the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info("supervisor (pid %d) starting %d workers", os.getpid(), len(self.slots))
        forwarded = 0
        while not self._signals:
            now = time.monotonic()
            for slot in self.slots:
                self._tend(slot, now)
            time.sleep(TICK)
        deadline = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        while any(self._alive(slot) for slot in self.slots):
            for received in self._signals[forwarded:]:
                self._forward(received)
            forwarded = len(self._signals)
            if time.monotonic() > deadline:
                self._kill_the_rest()
                break
            time.sleep(TICK)
        codes = [slot.process.returncode if slot.process else 0 for slot in self.slots]
        log.info("supervisor stopped; the workers exited with %s", codes)
        return 0 if all(code == 0 for code in codes) else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _tend(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None and process.poll() is None:
            return
        if process is not None:
            lived = now - slot.started
            slot.quick_deaths = 0 if lived >= STABLE_AFTER else slot.quick_deaths + 1
            delay = (
                0.0
                if not slot.quick_deaths
                else min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** (slot.quick_deaths - 1))
            )
            log.warning(
                "worker %d (pid %d) died (%s) after %.1fs; starting it again in %gs",
                slot.number,
                process.pid,
                _how(process.returncode),
                lived,
                delay,
            )
            slot.process, slot.restart_at = None, now + delay
        if now >= slot.restart_at:
            self._start(slot, now)

    def _start(self, slot: _Slot, now: float) -> None:
        env = {**self.env, SUPERVISOR_ENV: str(os.getpid()), WORKER_ENV: str(slot.number)}
        slot.process = subprocess.Popen(self.command, env=env, start_new_session=True)
        slot.started = now
        log.info("worker %d started (pid %d)", slot.number, slot.process.pid)

    @staticmethod
    def _alive(slot: _Slot) -> bool:
        return slot.process is not None and slot.process.poll() is None

    def _forward(self, signum: int) -> None:
        name = signal.Signals(signum).name
        log.info("%s: passing it on to the workers", name)
        for slot in self.slots:
            if self._alive(slot):
                assert slot.process is not None
                slot.process.send_signal(signum)

    def _kill_the_rest(self) -> None:
        for slot in self.slots:
            if self._alive(slot):
                assert slot.process is not None
                log.error(
                    "worker %d (pid %d) did not stop within %gs: killing it",
                    slot.number,
                    slot.process.pid,
                    self.shutdown_timeout + KILL_GRACE,
                )
                slot.process.kill()
                slot.process.wait()


def _how(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
