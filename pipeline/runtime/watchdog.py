"""A stage's watchdog: no rank waits for ever, and none ends without saying where it was.

The stage says what it is waiting for as it goes (`beat`: "the next batch from the loading
processes" at "step 37, epoch 2"); a thread of its own then ends the process with one line naming
the rank, that place and that wait when

  - nothing moved for `stall_timeout` seconds (a loading process that never started, a stuck
    collective): the line, then every thread's stack (so the hang explains itself), exit 124;
  - the process is told to stop (SIGTERM, SIGHUP): torchrun sends SIGTERM to every other rank the
    moment one fails, and a cluster's scheduler when it ends a job. The line, exit 128 + the signal.

The thread acts even while the main thread is blocked inside a collective, where a Python signal
handler would not run: the signal's number reaches it through `signal.set_wakeup_fd`. What a stage
has finished is kept either way (a shard's marker, last.pt, are written last and atomically), so
the run continues with the same command (`train --resume`).

Any process of this tool also writes every thread's stack to stderr on SIGUSR1 (faulthandler),
without stopping: `kill -USR1 <pid>` asks a live process where it is.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import sys
import threading
import time

STALLED_EXIT = 124  # as timeout(1)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_active: list["Watchdog"] = []  # the stage's watchdog while it runs (at most one per process)


def register_stack_dumps() -> None:
    """SIGUSR1 writes every thread's stack to stderr (faulthandler), from any state the process is in."""
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def beat(waiting_for: str, at: str | None = None) -> None:
    """The stage is now waiting for `waiting_for` (at `at`, kept from the last beat when None). A
    no-op outside a watched stage; cheap enough to call per batch."""
    if _active:
        _active[-1].beat(waiting_for, at)


def describe() -> str | None:
    """Where the watched stage is, as its lines say it ("rank 1 of 2 at step 4 (epoch 1), waiting
    for ..."), or None outside one."""
    return _active[-1].describe() if _active else None


def end_with(pid: int) -> None:
    """End this process as soon as process `pid` ends, however it ended (SIGKILL included): a
    loading process with its stage (loaders/workers.py), a torchrun rank with its launcher.

    Neither torch nor multiprocessing does it for a worker of the fork server: torch's watchdog
    watches the worker's parent (the server), and the server ends only when every process holding
    its "alive" pipe has, the workers included, so a killed stage left its workers and the server
    waiting on each other for ever (holding the stage's stdout open: seen as a hung test). And a
    rank outlived a torchrun killed by a test's timeout. A daemon thread waits on the pid's pidfd
    (Linux 5.3+; elsewhere it looks once a second) and ends this process with `os._exit` when it is
    readable: whoever this process served is gone, and what it had finished is kept already."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:  # it ended already
        os._exit(0)
    except (AttributeError, OSError):
        handle = None

    def watch():
        if handle is not None:
            select.select([handle], [], [])
        else:
            while _alive(pid):
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="w2s-end-with-stage", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


class Watchdog:
    """Watches one stage of this process (a context manager; see the module's docstring). Signals
    are taken only where they can be (the main thread); the stall check works anywhere."""

    def __init__(self, rank: int = 0, world_size: int = 1, stall_timeout: float | None = None):
        self.rank, self.world_size, self.stall_timeout = rank, world_size, stall_timeout or None
        self.waiting_for, self.at, self.since = "the stage to start", "start-up", time.monotonic()
        self._stop = threading.Event()
        self._pipe = None
        self._restore = None
        self._failing = False

    def beat(self, waiting_for: str, at: str | None = None) -> None:
        self.waiting_for, self.since = waiting_for, time.monotonic()
        if at is not None:
            self.at = at

    def describe(self) -> str:
        who = f"rank {self.rank} of {self.world_size}" if self.world_size > 1 else "the process"
        return f"{who} at {self.at}, waiting for {self.waiting_for}"

    def failing(self) -> None:
        """The stage is ending with an error: a stop signal from now on is ignored, so that the
        error's own line is what this rank says (torchrun stops every other rank the moment one
        fails, often while this one is still unwinding from the same loss; it kills a rank that
        does not end within its grace period)."""
        self._failing = True

    def __enter__(self) -> "Watchdog":
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, _noted) for sig in STOP_SIGNALS}
            wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            self._restore = (handlers, wakeup)
        _active.append(self)
        self._thread = threading.Thread(target=self._watch, name="w2s-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        _active.remove(self)
        self._stop.set()
        if self._restore is not None:
            handlers, wakeup = self._restore
            signal.set_wakeup_fd(wakeup)
            # a rank leaving with an error says so before it ends: torchrun's SIGTERM, sent once
            # another rank failed, would otherwise cut it short on its way to printing the line
            ranked_failure = exc_type is not None and self.world_size > 1
            for sig, handler in handlers.items():
                signal.signal(sig, signal.SIG_IGN if ranked_failure else handler)
        os.write(self._pipe[1], b"\0")  # wakes the thread, which sees _stop
        self._thread.join()
        for fd in self._pipe:
            os.close(fd)

    def _watch(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._pipe[0]], [], [], 1.0)
            if self._stop.is_set():
                return
            if ready:
                for number in os.read(self._pipe[0], 64):
                    if number in [int(s) for s in STOP_SIGNALS] and not self._failing:
                        name = signal.Signals(number).name
                        self._end(f"stopped by {name}{_WHO_SENDS.get(name, '')}", 128 + number)
            stalled = time.monotonic() - self.since
            if self.stall_timeout and stalled > self.stall_timeout:
                self._end(f"no progress for {stalled:.0f} s (--stall-timeout {self.stall_timeout:g}); every thread's "
                          "stack follows", STALLED_EXIT, stacks=True)

    def _end(self, why: str, code: int, stacks: bool = False) -> None:
        """The one line on stderr (and the stacks), then the process ends at once: its main thread
        may be blocked where nothing else could end it."""
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stderr.write(f"Error: {self.describe()}: {why}; what was finished is kept, continue with the same "
                         f"command (train: --resume)\n")
        sys.stderr.flush()
        if stacks:
            faulthandler.dump_traceback(all_threads=True)
        os._exit(code)


_WHO_SENDS = {"SIGTERM": " (torchrun stops every rank so when another one fails: look above for the first error; "
                         "a scheduler, when it ends the job)",
              "SIGHUP": " (the terminal or the session that started it ended)"}


def _noted(_signum, _frame) -> None:
    """The Python-level handler of a stop signal: nothing, as the watchdog's thread acts on it (the
    signal's number reaches it through the wakeup fd even while the main thread is blocked)."""
