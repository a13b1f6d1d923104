"""Running model-written Python in a sandboxed subprocess: time and memory limits, no network, a temp dir.

Layers: a fresh temp dir as cwd, HOME and TMPDIR, an empty environment, `python -I`; rlimits on address
space, CPU time, file size and core dumps; a wall-clock timeout that kills the whole process group; an
audit hook (installed before the program runs, and not removable by it) that refuses sockets,
subprocesses, `os.system`/`exec`/`fork`, `ctypes`, and writing, moving or deleting files outside the temp
dir; and, where the kernel allows unprivileged user namespaces, a network namespace of its own
(`unshare -rn`), so there is no route out even past the hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "timeout", "out_of_memory", "syntax_error", "refused"]
REFUSED_MARKER = "sandbox refused:"
GUARD = f"""
import os, runpy, sys

BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
           "os.spawn", "os.kill", "ctypes.", "pty.", "webbrowser.")
CHANGES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
           "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile")
HOME = os.path.realpath(os.getcwd())

def outside(path):
    if isinstance(path, int):
        return False
    return os.path.commonpath([HOME, os.path.realpath(os.fsdecode(path))]) != HOME

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def writes(mode, flags):
    return bool(set(mode or "") & set("wax+")) if mode is not None else bool((flags or 0) & WRITE_FLAGS)

def guard(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError("{REFUSED_MARKER} " + event)
    if event == "open" and args[0] is not None and writes(args[1], args[2]) and outside(args[0]):
        raise PermissionError("{REFUSED_MARKER} writing outside the sandbox: " + os.fsdecode(args[0]))
    if event in CHANGES and any(isinstance(arg, (str, bytes)) and outside(arg) for arg in args):
        raise PermissionError("{REFUSED_MARKER} " + event + " outside the sandbox")

sys.addaudithook(guard)
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass(frozen=True)
class Execution:
    """The outcome of one sandboxed run; `network_namespace` says whether the kernel layer was used."""

    status: Status
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    network_namespace: bool

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def record(self) -> dict[str, Any]:
        return asdict(self)


@cache
def network_namespace_available() -> bool:
    """Whether `unshare -rn` works here (unprivileged user and network namespaces)."""
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limits(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _status(returncode: int, stderr: str) -> Status:
    if returncode == 0:
        return "passed"
    if REFUSED_MARKER in stderr:
        return "refused"
    if "MemoryError" in stderr:
        return "out_of_memory"
    if returncode in (-9, -24):  # killed by the CPU-time limit
        return "timeout"
    return "failed"


async def run_python(
    source: str, *, timeout_seconds: float = 10.0, memory_mb: int = 512, output_chars: int = 4000
) -> Execution:
    """Run `source` as a script in the sandbox and report how it ended (never raises for the program's faults)."""
    started = time.perf_counter()
    try:
        compile(source, "main.py", "exec")
    except (SyntaxError, ValueError) as error:
        return Execution("syntax_error", None, 0.0, "", f"{type(error).__name__}: {error}", False)
    isolated = network_namespace_available()
    with tempfile.TemporaryDirectory(prefix="agentinstruct-sandbox-") as workdir:
        Path(workdir, "main.py").write_text(source, encoding="utf-8")
        command = [sys.executable, "-I", "-c", GUARD]
        if isolated:
            command = ["unshare", "-rn", *command]
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=workdir,
            env={
                "PATH": os.defpath,
                "HOME": workdir,
                "TMPDIR": workdir,
                "PYTHONHASHSEED": "0",
                "PYTHONIOENCODING": "utf-8",
            },
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _limits(memory_mb, int(timeout_seconds) + 1),
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            stdout, stderr = await process.communicate()
            status: Status = "timeout"
        else:
            status = _status(process.returncode or 0, stderr.decode("utf-8", "replace"))
    return Execution(
        status=status,
        returncode=process.returncode,
        seconds=round(time.perf_counter() - started, 3),
        stdout=stdout.decode("utf-8", "replace")[-output_chars:],
        stderr=stderr.decode("utf-8", "replace")[-output_chars:],
        network_namespace=isolated,
    )
