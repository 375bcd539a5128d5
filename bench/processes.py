"""The processes of a benchmark run: servers under test, their CPU and memory, py-spy, the host."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bench.config import Config

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def log(message: str) -> None:
    """Progress on stderr (the report goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    """Allow thousands of sockets: raise the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def family(pid: int) -> list[int]:
    """A process and its descendants alive now (a server's workers, under ``--workers``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo += children.get(current, [])
    return found


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (VmRSS), in KiB."""
    total = 0
    for member in family(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            if member == pid:
                raise RuntimeError(f"no VmRSS for {pid}") from None
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its descendants alive now (0 when unknown or
    gone); this process for None."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


class ServerProcess:
    """A server under test, in its own process, its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        ready: str = "Uvicorn running on",
        ready_count: int = 1,
    ) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        # The server logs this line (``ready_count`` times: once per worker) once it accepts connections.
        self.ready, self.ready_count = ready, ready_count
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 90.0) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=raise_nofile,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.log_path.read_text(errors="replace").count(self.ready) < self.ready_count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"{self.name} server did not start:\n{tail}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def base_env() -> dict[str, str]:
    """This environment without the project's settings: the servers run on their defaults."""
    from gql_api.settings import Settings

    drop = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in drop}


def py_spy() -> str | None:
    """The py-spy executable, if installed."""
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None
    )


class Profiler:
    """py-spy recording the server (and its database) while one phase runs."""

    EXTENSIONS: ClassVar[dict[str, str]] = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}

    def __init__(self, config: Config, target_name: str, pids: dict[str, int | None]) -> None:
        self.config, self.target_name, self.pids = config, target_name, pids
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, label: str) -> None:
        assert self.config.profile_dir is not None
        exe = py_spy()
        assert exe is not None
        for role, pid in self.pids.items():
            if pid is None:
                continue
            out = self.config.profile_dir / (
                f"{self.target_name}-{label}-{role}.{self.EXTENSIONS[self.config.profile_format]}"
            )
            self.processes.append(
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--subprocesses",  # a server's workers, under --workers
                        "--rate",
                        "100",
                        "--format",
                        self.config.profile_format,
                        "--output",
                        str(out),
                        *(["--native"] if self.config.profile_native else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def machine() -> dict[str, Any]:
    """The host a run is on, for the report's first line."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
