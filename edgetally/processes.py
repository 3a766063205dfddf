"""Child processes of EdgeTally components (gateway, cloud, fleet) that can be started,
stopped, SIGKILLed and restarted, and that say when they are ready (``--ready-file``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them.

    A Ctrl-C inside ``Popen`` (after the fork, before it returns) would leave a child running
    whose pid nobody knows, so nothing would ever stop it; deferred, the signal arrives once
    ``_proc`` is set and the caller's cleanup stops the child with everything else.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only: they cannot interrupt this one
        return
    held: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in held:
            signal.raise_signal(signum)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block SIGTERM raises ``KeyboardInterrupt("SIGTERM")``, as Ctrl-C raises one.

    A command that starts children stops them in its Ctrl-C cleanup; by default SIGTERM (what
    systemd, ``docker stop`` or any supervisor sends) ends the Python process at once instead
    and leaves them running, orphaned. ``str(exc) or "Ctrl-C"`` says which one it was.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ComponentError(Exception):
    """A component exited early or did not become ready in time."""


class Component:
    """``python -m edgetally ARGS`` as a restartable child process. Constructing it does no I/O.

    ``ready_file`` (if given) is appended to the arguments as ``--ready-file`` and removed before
    each start; :meth:`wait_ready` waits for the child to write it.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        workdir: Path,
        *,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.workdir = workdir
        self.ready_file = workdir / f"{name}.ready" if ready else None
        self.log_path = workdir / f"{name}.log"
        self.env = env
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        extra = ["--ready-file", str(self.ready_file)] if self.ready_file is not None else []
        return [sys.executable, "-m", "edgetally", *self.args, *extra]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        if self.running:
            raise ComponentError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, "COLUMNS": "120", **(self.env or {})}
        with open(self.log_path, "ab") as log_file, _signals_deferred():
            log_file.write(f"--- start #{self.starts + 1}: {' '.join(self.command)}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        log.info("%s started (pid %d)", self.name, self._proc.pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        if self.ready_file is None:
            return
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if not self.running:
                raise ComponentError(f"{self.name} exited with {self.returncode} before it was ready; see {self.log_path}")
            if time.monotonic() > deadline:
                raise ComponentError(f"{self.name} was not ready within {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself; return its exit code."""
        if self._proc is None:
            raise ComponentError(f"{self.name} was never started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ComponentError(f"{self.name} did not finish within {timeout:.0f}s; see {self.log_path}") from exc

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), SIGKILL if it does not exit within ``timeout``."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
                self._signal_group(signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: the crash the guarantees are about."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            proc.wait(10)
            log.info("%s killed (SIGKILL)", self.name)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
