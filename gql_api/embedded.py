"""The embedded MongoDB wire-protocol server (nx-27017) that development runs on.

The server's URI is recorded in the data dir, so every ``gql-api`` command that shares the data
dir reaches the same database, and a second ``serve`` reuses the running server.

The server belongs to the data dir, not to the process that happened to start it: every process
using it holds a shared lock on ``embedded.users`` for as long as it does, and the last one to let
go stops it. Stopping the replica that started it leaves the others their database; stopping the
only replica leaves nothing running. Starting and stopping both happen under ``embedded.lock``, so
a process arriving while the last one leaves either keeps the server or starts a fresh one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
# nx-27017 logs every command at INFO; keep its log to warnings so it stays small and fast.
_LAUNCHER = (
    "import logging, sys; logging.getLogger('nx_27017').setLevel(logging.WARNING); "
    "from nx_27017.nx_27017 import main; sys.exit(main())"
)


# Every server this process started, by pid, while it may still run. Whichever object stops one
# (the last user need not be the one that started it), its Popen reaps it; and a Popen is never
# collected, warning that its server still runs, when the object that started it lets go first.
_spawned: dict[int, subprocess.Popen[bytes]] = {}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a listening server binds: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that may not be our child to exit; whether it did in time."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfd (not Linux): poll for the pid instead
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)  # readable once it has exited
        return bool(readable)
    finally:
        os.close(pidfd)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedMongo:
    """Starts, finds and stops the nx-27017 server that keeps its data in ``data_dir``."""

    host = "127.0.0.1"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.uri_file = self.data_dir / "mongodb.uri"
        self.db_file = self.data_dir / "chat.db"
        self.pid_file = self.data_dir / "nx-27017.pid"
        self.log_file = self.data_dir / "nx-27017.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._use: IO[bytes] | None = None  # holds the shared lock while this object uses the server

    @property
    def owned(self) -> bool:
        """Whether this object started the server (its last user stops it, whoever that is)."""
        return self._process is not None

    def running_uri(self) -> str | None:
        """The URI of a server already running on this data dir, if any."""
        uri = self._recorded_uri()
        parts = urlsplit(uri or "")
        if uri and parts.hostname and parts.port and _accepts(parts.hostname, parts.port):
            return uri
        return None

    def _recorded_uri(self) -> str | None:
        try:
            return self.uri_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialises starting and stopping across every process on this data dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "embedded.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _others_use_it(self) -> bool:
        with open(self.data_dir / "embedded.users", "ab") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def start(self, port: int | None = None) -> str:
        """Reuse the server running on this data dir, or start one; return its URI.

        ``port``: where a new server listens (default: the port recorded for this data dir when
        it is free, else a free one); a server restarted on the port it had keeps the URI its
        clients know, so they reconnect by themselves.
        """
        with self._exclusive():
            if self._use is None:
                # Released by stop(), or by the kernel when this process dies however it dies.
                self._use = open(self.data_dir / "embedded.users", "ab")  # noqa: SIM115
                fcntl.flock(self._use, fcntl.LOCK_SH)
            try:
                return self._reuse_or_spawn(port)
            except BaseException:
                self._release()
                raise

    def _reuse_or_spawn(self, port: int | None) -> str:
        if uri := self.running_uri():
            logger.info("Reusing the embedded MongoDB server at %s", uri)
            return uri
        recorded = urlsplit(self._recorded_uri() or "").port
        if port is None and recorded and _port_is_free(self.host, recorded):
            port = recorded
        port = port or _free_port(self.host)
        uri = f"mongodb://{self.host}:{port}/?directConnection=true"
        self._spawn(port)
        self.uri_file.write_text(uri + "\n")
        logger.info("Started the embedded MongoDB server (nx-27017) at %s", uri)
        return uri

    def _spawn(self, port: int) -> None:
        self.pid_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-c",
            _LAUNCHER,
            "--db",
            str(self.db_file),
            "--host",
            self.host,
            "--port",
            str(port),
            "--pid-file",
            str(self.pid_file),
            "--log-file",
            str(self.log_file),
        ]
        for pid in [pid for pid, process in _spawned.items() if process.poll() is not None]:
            del _spawned[pid]  # exited (and now reaped): its pid may be reused
        with open(self.data_dir / "nx-27017.out", "ab") as out:
            self._process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the API must not kill it first
            )
        _spawned[self._process.pid] = self._process
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(self.host, port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                _terminate(self._process)
                raise RuntimeError(f"the embedded MongoDB server did not start; see {self.data_dir / 'nx-27017.out'}")
            time.sleep(0.05)

    def _release(self) -> None:
        use, self._use = self._use, None
        if use is not None:
            use.close()

    def stop(self) -> None:
        """Stop using the server; the last process using it stops it, whoever started it."""
        if self._use is None:
            return
        with self._exclusive():
            self._release()
            if self._others_use_it():
                logger.info("Leaving the embedded MongoDB server running for the other processes using it")
                return
            self._stop_server()
            self.uri_file.unlink(missing_ok=True)
            logger.info("Stopped the embedded MongoDB server")

    def _stop_server(self) -> None:
        """Stop the recorded server, whichever process (or object) started it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if (process := _spawned.pop(pid, None) if pid else None) is not None:
            _terminate(process)  # this process's child: stopped and reaped
            return
        if self.running_uri() is None:
            return  # gone already
        try:
            if pid is None:
                raise ProcessLookupError("no pid recorded")
            cmdline = Path(f"/proc/{pid}/cmdline")
            # The pid must still be that server's, not a recycled one.
            if cmdline.parent.exists() and str(self.db_file).encode() not in cmdline.read_bytes():
                raise ProcessLookupError(pid)
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError) as exc:
            logger.warning("Cannot stop the embedded MongoDB server: no process recorded for it (%r)", exc)
            return
        if not _wait_for_exit(pid, STOP_TIMEOUT_SECONDS):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_for_exit(pid, STOP_TIMEOUT_SECONDS)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    _spawned.pop(process.pid, None)
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
