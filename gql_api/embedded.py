"""The embedded MongoDB wire-protocol server (nx-27017) that development runs on.

The server's URI is recorded in the data dir, so every ``gql-api`` command that shares the data
dir reaches the same database, and a second ``serve`` reuses the running server.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 20.0
# nx-27017 logs every command at INFO; keep its log to warnings so it stays small and fast.
_LAUNCHER = (
    "import logging, sys; logging.getLogger('nx_27017').setLevel(logging.WARNING); "
    "from nx_27017.nx_27017 import main; sys.exit(main())"
)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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

    @property
    def owned(self) -> bool:
        """Whether this object started the server (and so stops it)."""
        return self._process is not None

    def running_uri(self) -> str | None:
        """The URI of a server already running on this data dir, if any."""
        try:
            uri = self.uri_file.read_text().strip()
        except FileNotFoundError:
            return None
        parts = urlsplit(uri)
        if parts.hostname and parts.port and _accepts(parts.hostname, parts.port):
            return uri
        return None

    def start(self, port: int | None = None) -> str:
        """Reuse the server running on this data dir, or start one; return its URI.

        ``port``: where a new server listens (default: a free port); a server restarted on the
        port it had keeps the URI its clients know, so they reconnect by themselves.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "embedded.lock", "w") as lock:
            # Two processes starting at once must not both spawn a server on one file.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if uri := self.running_uri():
                logger.info("Reusing the embedded MongoDB server at %s", uri)
                return uri
            port = port or _free_port(self.host)
            uri = f"mongodb://{self.host}:{port}/?directConnection=true"
            self._spawn(port)
            self.uri_file.write_text(uri + "\n")
            logger.info("Started the embedded MongoDB server (nx-27017) at %s", uri)
            return uri

    def _spawn(self, port: int) -> None:
        self.pid_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-c", _LAUNCHER,
            "--db", str(self.db_file),
            "--host", self.host,
            "--port", str(port),
            "--pid-file", str(self.pid_file),
            "--log-file", str(self.log_file),
        ]
        with open(self.data_dir / "nx-27017.out", "ab") as out:
            self._process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the API must not kill it first
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(self.host, port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the embedded MongoDB server did not start; see {self.data_dir / 'nx-27017.out'}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server if this object started it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.uri_file.unlink(missing_ok=True)
        logger.info("Stopped the embedded MongoDB server")
