"""Running model-written Python in an OS sandbox (bubblewrap), with an audit hook as a second layer.

The program runs under `bwrap` in new user, PID, mount, IPC, UTS, network and (where possible) cgroup
namespaces, as uid/gid 65534 with no capabilities and no new privileges, in a new session that dies with
its parent. It sees only a read-only `/usr` (and the `/bin`, `/lib*` links to it), the Python installation,
a fresh `/proc` of its own PID namespace, a minimal `/dev` and a small private tmpfs (`/sandbox`: cwd,
HOME, TMPDIR); `/` is read-only and neither `/etc`, the project nor any home directory exists inside. The
environment is emptied and only stdin/stdout/stderr are inherited. On x86-64 a seccomp filter refuses
creating processes (threads stay allowed), new namespaces, mounts, ptrace, keyrings, BPF and io_uring.
rlimits bound memory, CPU time, file size and core dumps; a wall-clock timeout kills bwrap, whose PID
namespace dies with it, so no process outlives the run. Output is read as it comes and the run is killed
once it exceeds `max_output_bytes`. When bwrap is missing or fails its self-test, nothing runs: the
status is `unavailable`. The audit hook inside refuses sockets, subprocesses, `ctypes` and writes outside
the temp dir with a clear `refused` status; the program can remove it, the OS layer still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

Status = Literal[
    "passed", "failed", "timeout", "out_of_memory", "syntax_error", "refused", "output_limit", "unavailable"
]
REFUSED_MARKER = "sandbox refused:"
WORKDIR = "/sandbox"
NOBODY = "65534"
TMPFS_BYTES = 64 * 1024 * 1024
FILE_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
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

# seccomp (x86-64 numbers): refused with EPERM, except clone3, which says ENOSYS so libc falls back to clone,
# whose flags the filter can read (threads allowed, new processes refused).
X86_64_REFUSED = {
    "fork": 57, "vfork": 58, "ptrace": 101, "pivot_root": 155, "mount": 165, "umount2": 166, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
}  # fmt: skip
X86_64_CLONE, X86_64_CLONE3, AUDIT_ARCH_X86_64, X32_BIT = 56, 435, 0xC000003E, 0x40000000
CLONE_THREAD, EPERM, ENOSYS = 0x10000, 1, 38
LOAD, JEQ, JGE, JSET, RETURN = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, KILL_PROCESS, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


@dataclass(frozen=True)
class Execution:
    """The outcome of one sandboxed run; deterministic for the same program (no timings, no paths)."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _instruction(code: int, k: int, jump_true: int = 0, jump_false: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jump_true, jump_false, k)


def seccomp_filter() -> bytes | None:
    """A compiled classic-BPF seccomp program for bwrap's `--seccomp`, or None off x86-64."""
    if platform.machine() != "x86_64":
        return None
    program = [
        _instruction(LOAD, 4),  # seccomp_data.arch
        _instruction(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        _instruction(RETURN, KILL_PROCESS),
        _instruction(LOAD, 0),  # seccomp_data.nr
        _instruction(JGE, X32_BIT, 0, 1),
        _instruction(RETURN, ERRNO | EPERM),
        _instruction(JEQ, X86_64_CLONE3, 0, 1),
        _instruction(RETURN, ERRNO | ENOSYS),
    ]
    for number in X86_64_REFUSED.values():
        program += [_instruction(JEQ, number, 0, 1), _instruction(RETURN, ERRNO | EPERM)]
    program += [
        _instruction(JEQ, X86_64_CLONE, 0, 4),
        _instruction(LOAD, 16),  # low half of seccomp_data.args[0]: the clone flags
        _instruction(JSET, CLONE_THREAD, 0, 1),
        _instruction(RETURN, ALLOW),
        _instruction(RETURN, ERRNO | EPERM),
        _instruction(RETURN, ALLOW),
    ]
    return b"".join(program)


def interpreter() -> Path:
    """The base installation's python (not the venv's launcher), which the sandbox binds read-only."""
    return Path(_prefix(), "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")


def _prefix() -> str:
    return os.path.realpath(sys.base_prefix)


def _system_view() -> list[str]:
    arguments: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    prefix = _prefix()
    if not any(prefix == path or prefix.startswith(f"{path}/") for path in SYSTEM_PATHS):
        arguments += ["--ro-bind", prefix, prefix]
    return arguments


def bwrap_command(bwrap: str, source_fd: int, seccomp_fd: int | None) -> list[str]:
    """The bwrap invocation that runs the guard (and through it `main.py`, copied in from `source_fd`)."""
    return [
        bwrap,
        *("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"),
        *("--uid", NOBODY, "--gid", NOBODY, "--cap-drop", "ALL", "--hostname", "sandbox"),
        *_system_view(),
        *("--proc", "/proc", "--dev", "/dev"),
        *("--size", str(TMPFS_BYTES), "--perms", "0700", "--tmpfs", WORKDIR),
        *("--file", str(source_fd), f"{WORKDIR}/main.py", "--remount-ro", "/", "--chdir", WORKDIR),
        *("--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR),
        *("--setenv", "TMPDIR", WORKDIR, "--setenv", "PYTHONHASHSEED", "0", "--setenv", "PYTHONIOENCODING", "utf-8"),
        *(("--seccomp", str(seccomp_fd)) if seccomp_fd is not None else ()),
        "--",
        str(interpreter()),
        *("-I", "-c", GUARD),
    ]


def _memfd(name: str, data: bytes) -> int:
    descriptor = os.memfd_create(name, 0)
    os.write(descriptor, data)
    os.lseek(descriptor, 0, os.SEEK_SET)
    return descriptor


@contextlib.contextmanager
def _launch_files(source: str) -> Iterator[tuple[int, int | None]]:
    """In-memory files bwrap copies `main.py` and the seccomp program from (closed on exit, never inherited
    by the program: bwrap closes them once read)."""
    seccomp = seccomp_filter()
    source_fd = _memfd("main.py", source.encode("utf-8", "surrogatepass"))
    seccomp_fd = _memfd("seccomp", seccomp) if seccomp else None
    try:
        yield source_fd, seccomp_fd
    finally:
        for descriptor in (source_fd, seccomp_fd):
            if descriptor is not None:
                os.close(descriptor)


def limited(prlimit: str, command: list[str], memory_mb: int, cpu_seconds: int) -> list[str]:
    """`command` under rlimits for it and everything under it, set by util-linux's `prlimit` before it execs the
    command (not by a `preexec_fn`, which runs Python in a forked child of a threaded process and can deadlock
    there). RLIMIT_NPROC is left out: it exempts uid 0 outside the namespace and counts all of a normal user's
    processes; the seccomp filter bounds processes instead."""
    memory = memory_mb * 1024 * 1024
    limits = [f"--as={memory}", f"--cpu={cpu_seconds}", f"--fsize={FILE_BYTES}", "--core=0"]
    return [prlimit, *limits, "--", *command]


class _Output:
    """One stream's tail (at most `keep` bytes) plus a shared count of every byte read."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.tail = bytearray()

    def add(self, chunk: bytes) -> None:
        self.tail += chunk
        del self.tail[: -self.keep]

    def text(self, chars: int) -> str:
        return self.tail.decode("utf-8", "replace")[-chars:]


async def _drain(stream: asyncio.StreamReader, output: _Output, counted: list[int], cap: int) -> bool:
    """Read `stream` to its end; False as soon as the total over both streams exceeds `cap`."""
    while chunk := await stream.read(CHUNK_BYTES):
        counted[0] += len(chunk)
        output.add(chunk)
        if counted[0] > cap:
            return False
    return True


async def _discard(stream: asyncio.StreamReader) -> None:
    """Read what a killed run left in a pipe, keeping nothing, so the pipe reaches its end and closes."""
    while await stream.read(CHUNK_BYTES):
        pass


def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill bwrap's process group unless already reaped (then its id may be reused); the sandbox's PID
    namespace, and so every process in it, dies with bwrap."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)


def _returncode(bwrap_code: int) -> int:
    """bwrap reports a child killed by signal n as 128 + n; give it as -n, like subprocess does."""
    return -(bwrap_code - 128) if bwrap_code > 128 else bwrap_code


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


@cache
def isolation_problem(bwrap: str | None) -> str | None:
    """Why the sandbox cannot run here (None when it can): checked once per bwrap binary and process."""
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed; run `make setup` or `apt-get install bubblewrap`"
    if not interpreter().is_file():
        return f"the Python interpreter {interpreter()} is missing"
    probe = "import os\nprint(os.getuid(), os.getpid(), sorted(os.listdir('/proc/self/fd')))"
    try:
        with _launch_files(probe) as (source_fd, seccomp_fd):
            outcome = subprocess.run(
                bwrap_command(bwrap, source_fd, seccomp_fd),
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                env={},
                pass_fds=[fd for fd in (source_fd, seccomp_fd) if fd is not None],
            )
    except (OSError, subprocess.SubprocessError) as error:
        return f"bubblewrap failed its self-test: {error}"
    if outcome.returncode != 0 or outcome.stdout.strip() != f"{NOBODY} 2 ['0', '1', '2', '3']":
        return f"bubblewrap failed its self-test (user namespaces disabled?): {outcome.stderr.strip()[-300:]}"
    return None


async def run_python(
    source: str,
    *,
    timeout_seconds: float = 10.0,
    memory_mb: int = 512,
    output_chars: int = 4000,
    max_output_bytes: int = 1024 * 1024,
) -> Execution:
    """Run `source` as a script in the sandbox and report how it ended (never raises for the program's faults).

    Refuses (status `unavailable`) rather than run unconfined when bubblewrap is missing or not working."""
    try:
        compile(source, "main.py", "exec")
    except (SyntaxError, ValueError) as error:
        return Execution("syntax_error", None, "", f"{type(error).__name__}: {error}")
    bwrap, prlimit = shutil.which("bwrap"), shutil.which("prlimit")
    problem = isolation_problem(bwrap) or (None if prlimit else "prlimit (util-linux) is not installed")
    if bwrap is None or prlimit is None or problem:
        return Execution("unavailable", None, "", f"the code sandbox is unavailable: {problem}")
    with _launch_files(source) as (source_fd, seccomp_fd):
        command = bwrap_command(bwrap, source_fd, seccomp_fd)
        process = await asyncio.create_subprocess_exec(
            *limited(prlimit, command, memory_mb, int(timeout_seconds) + 1),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={},  # bwrap's own environment is readable inside, as /proc/1/environ
            pass_fds=[fd for fd in (source_fd, seccomp_fd) if fd is not None],
            start_new_session=True,
        )
    return await _supervise(process, timeout_seconds, output_chars, max_output_bytes)


async def _supervise(
    process: asyncio.subprocess.Process, timeout_seconds: float, output_chars: int, max_output_bytes: int
) -> Execution:
    """Stream both outputs with a cap, enforce the wall clock, and always leave no process behind."""
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr, counted = _Output(4 * output_chars), _Output(4 * output_chars), [0]
    readers = [
        asyncio.ensure_future(_drain(process.stdout, stdout, counted, max_output_bytes)),
        asyncio.ensure_future(_drain(process.stderr, stderr, counted, max_output_bytes)),
    ]
    status: Status | None = None
    try:
        async with asyncio.timeout(timeout_seconds):
            for finished in asyncio.as_completed(readers):
                if not await finished:
                    status = "output_limit"
                    break
            if status is None:
                await process.wait()
    except TimeoutError:
        status = "timeout"
    finally:
        _kill(process)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(_discard(process.stdout), _discard(process.stderr))
        await process.wait()
    returncode = _returncode(process.returncode or 0)
    return Execution(
        status=status or _status(returncode, stderr.text(output_chars)),
        returncode=returncode,
        stdout=stdout.text(output_chars),
        stderr=stderr.text(output_chars),
    )
