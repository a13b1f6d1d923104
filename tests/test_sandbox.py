"""The code sandbox: ordinary outcomes, refusal without isolation, and adversarial snippets that must stay
contained, most of them after switching the in-process audit hook off, so the OS layer is what holds."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentinstruct_dagster.config.catalogue import load_catalogue
from agentinstruct_dagster.config.profiles import SandboxSettings
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.sandbox import Execution, run_python
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.shapes.base import Rejection, Support, Task

# What the issue did: walk to the launcher's globals and empty the hook's lists.
HOOK_OFF = """
import sys
frame = sys._getframe()
while frame.f_back is not None:
    frame = frame.f_back
frame.f_globals.update(BLOCKED=(), CHANGES=(), outside=lambda path: False)
import socket
socket.socket().close()
print("hook off", flush=True)
"""
FAKE_SECRET = "sk-test-sandbox-secret-0123456789"


def sandboxed(source: str, **limits: float) -> Execution:
    return asyncio.run(run_python(source, **limits))


def unhooked(source: str, **limits: float) -> Execution:
    """Run `source` with the audit hook switched off first, and check that it was."""
    outcome = sandboxed(HOOK_OFF + source, **limits)
    assert outcome.stdout.startswith("hook off"), outcome
    return outcome


def attempts(*statements: str) -> str:
    """A snippet that tries each statement and prints `ok <n>` or `denied <n> <error>`."""
    lines = []
    for number, statement in enumerate(statements):
        lines += [
            "try:",
            f"    {statement}",
            f"    print('ok {number}', flush=True)",
            "except Exception as error:",
            f"    print('denied {number}', type(error).__name__, flush=True)",
        ]
    return "\n".join(lines) + "\n"


def assert_all_denied(outcome: Execution, count: int) -> None:
    assert outcome.status == "passed", outcome
    assert [line.split()[0] for line in outcome.stdout.splitlines()[1:]] == ["denied"] * count, outcome.stdout


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_passing_failing_and_broken_code_keep_their_statuses() -> None:
    assert sandboxed("assert sum([1, 2]) == 3\nprint('ok')").status == "passed"
    failed = sandboxed("assert 1 + 1 == 3, 'arithmetic'")
    assert failed.status == "failed" and "arithmetic" in failed.stderr
    assert sandboxed("def broken(:\n").status == "syntax_error"


def test_the_record_is_deterministic_and_holds_no_timing() -> None:
    source = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nassert False, 'no'"
    first, second = sandboxed(source), sandboxed(source)
    assert first.record() == second.record()
    assert set(first.record()) == {"status", "returncode", "stdout", "stderr"}


def test_the_program_sees_a_bare_system_as_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_SECRET)
    outcome = sandboxed(
        "import os\nprint(os.getuid(), os.getgid(), os.getpid())\nprint(sorted(os.listdir('/proc/self/fd')))\n"
        "print(sorted(os.environ))\nprint(os.path.exists('/etc'), os.path.exists(" + repr(str(project_dir())) + "))"
    )
    assert outcome.status == "passed", outcome
    ids, descriptors, environment, visible = outcome.stdout.splitlines()
    assert ids == "65534 65534 2" and descriptors == "['0', '1', '2', '3']"
    assert environment == "['HOME', 'LC_CTYPE', 'PATH', 'PWD', 'PYTHONHASHSEED', 'PYTHONIOENCODING', 'TMPDIR']"
    assert visible == "False False" and FAKE_SECRET not in outcome.stdout


def test_writes_stay_in_the_temp_dir_even_with_the_hook_off(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    inside = sandboxed("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert inside.status == "passed" and inside.stdout.strip() == "ok"
    hooked = sandboxed(f"open({str(victim)!r}, 'w').write('gone')")
    assert hooked.status == "refused"
    outcome = unhooked(
        attempts(
            f"open({str(victim)!r}, 'w').write('gone')",
            f"import os; os.remove({str(victim)!r})",
            f"import shutil; shutil.rmtree({str(tmp_path)!r})",
            f"import os; os.open({str(tmp_path / 'new.txt')!r}, os.O_WRONLY | os.O_CREAT)",
            "open('/usr/planted', 'w').write('x')",
            "open('/planted', 'w').write('x')",
            f"import os; os.remove({sys.executable!r})",
        )
    )
    assert_all_denied(outcome, 7)
    assert victim.read_text() == "precious" and sorted(tmp_path.iterdir()) == [victim]


def test_secrets_and_project_files_are_out_of_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_SECRET)
    outcome = unhooked(
        attempts(
            "print(open('/etc/shadow').read())",
            "print(open(" + repr(str(project_dir() / "pyproject.toml")) + ").read())",
            "print(open('/proc/1/environ').read())",
            f"print(open('/proc/{os.getpid()}/environ').read())",
            "import os; print(open(f'/proc/{os.getppid()}/environ').read())",
            "print(open(" + repr(str(Path.home() / ".bashrc")) + ").read())",
        )
    )
    assert FAKE_SECRET not in outcome.stdout + outcome.stderr
    assert "[project]" not in outcome.stdout
    lines = outcome.stdout.splitlines()[1:]
    assert [line.split()[:2] for line in lines if line.startswith("denied")] == [
        ["denied", "0"], ["denied", "1"], ["denied", "3"], ["denied", "5"]
    ]  # fmt: skip
    assert "ok 2" in lines and "ok 4" in lines  # /proc/1 is the sandbox's own init: readable and empty


def test_processes_outside_cannot_be_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    outcome = unhooked(
        attempts(
            f"import os; os.kill({sleeper.pid}, 9)",
            f"import os, signal; signal.pidfd_send_signal(os.pidfd_open({sleeper.pid}), 9)",
            f"import os; os.kill({os.getpid()}, 9)",
            "import ctypes; assert ctypes.CDLL(None).kill(" + str(sleeper.pid) + ", 9) == 0",
        )
    )
    assert_all_denied(outcome, 4)
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_killing_its_parent_or_everything_hurts_nobody(sleeper: subprocess.Popen[bytes]) -> None:
    outcome = unhooked(attempts("import os; os.kill(os.getppid(), 9)", "import os; os.kill(-1, 9)") + "print('alive')")
    assert outcome.status == "passed" and outcome.stdout.splitlines()[-1] == "alive", outcome
    assert sleeper.poll() is None


def test_a_fork_bomb_gets_no_process() -> None:
    outcome = unhooked(
        "import os\ncreated = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        while True:\n            pass\n"
        "    created += 1\nprint('created', created)",
        timeout_seconds=5,
    )
    assert outcome.status == "passed" and outcome.stdout.splitlines()[-1] == "created 0"


def live_processes_in(namespace: str) -> list[int]:
    """Host pids of the processes in a PID namespace, zombies (already dead, awaiting their reaper) aside."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            in_namespace = entry.name.isdigit() and os.readlink(entry / "ns" / "pid") == namespace
            if in_namespace and "\nState:\tZ" not in (entry / "status").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_no_process_outlives_the_run(tmp_path: Path) -> None:
    late = tmp_path / "late.txt"
    outcome = unhooked(
        "import os, time, threading\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\n"
        "def linger():\n    os.setsid()\n    time.sleep(3)\n    open(" + repr(str(late)) + ", 'w').write('late')\n"
        "for spawn in (os.fork, lambda: os.posix_spawn('/bin/sleep', ['sleep', '30'], {})):\n"
        "    try:\n        if spawn() == 0:\n            linger()\n    except OSError as error:\n"
        "        print('refused', type(error).__name__, flush=True)\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\nprint('done')"
    )
    namespace = outcome.stdout.splitlines()[1]
    assert outcome.status == "passed" and namespace.startswith("pid:[") and outcome.stdout.endswith("done\n")
    assert namespace != os.readlink("/proc/self/ns/pid")
    deadline = time.monotonic() + 2  # the namespace's init may still be in the kernel's exit path
    while live_processes_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes_in(namespace) == []
    time.sleep(5)
    assert not late.exists()


def test_no_network_even_to_loopback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        hooked = sandboxed(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        outcome = unhooked(attempts(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"))
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert hooked.status == "refused" and "socket" in hooked.stderr
    assert_all_denied(outcome, 1)


def test_huge_output_is_cut_off_without_filling_the_caller() -> None:
    clear_refs = Path("/proc/self/clear_refs")
    clear_refs.write_text("5")  # resets VmHWM, this process's peak resident memory

    def peak_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])

    before = peak_kb()
    outcome = sandboxed("import sys\nchunk = 'x' * 2 ** 20\nfor _ in range(1024):\n    sys.stdout.write(chunk)")
    assert outcome.status == "output_limit" and len(outcome.stdout) == 4000
    assert peak_kb() - before < 20 * 1024, (before, peak_kb())


def test_runaway_code_and_memory_hogs_are_stopped() -> None:
    started = time.monotonic()
    runaway = sandboxed("while True:\n    pass", timeout_seconds=1.0)
    assert runaway.status == "timeout" and time.monotonic() - started < 5
    sleeping = sandboxed("import time\ntime.sleep(30)", timeout_seconds=1.0)
    assert sleeping.status == "timeout" and time.monotonic() - started < 10
    assert sandboxed("blob = bytearray(4 * 1024 ** 3)", memory_mb=256).status == "out_of_memory"
    assert sandboxed("import os\nos.system('true')").status == "refused"


def code_task(code: str, tests: str) -> Task:
    return Task("text", "Add two numbers.", "", {"code": code, "tests": tests})


def complete_code(task: Task) -> Task | Rejection:
    skill = next(skill for skill in load_catalogue().values() if skill.shape == "code")

    async def no_calls(request: object) -> object:
        raise AssertionError("code checks make no model calls")

    support = Support(skill, no_calls, SandboxSettings(timeout_seconds=2), lambda result, agent: None)
    return asyncio.run(shape_for(skill).complete(task, support))


def test_failing_code_is_rejected_with_the_sandbox_outcome() -> None:
    outcome = complete_code(code_task("def add(a, b):\n    return a - b", "assert add(2, 2) == 4"))
    assert isinstance(outcome, Rejection) and outcome.reason == "code_failed"
    assert outcome.payload["execution"]["status"] == "failed" and "AssertionError" in outcome.detail


def test_without_bubblewrap_nothing_runs_and_the_row_is_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    witness = tmp_path / "ran.txt"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    outcome = sandboxed(f"open({str(witness)!r}, 'w').write('ran')")
    assert outcome.status == "unavailable" and "bubblewrap" in outcome.stderr and not witness.exists()
    rejected = complete_code(code_task("def add(a, b):\n    return a + b", "assert add(2, 2) == 4"))
    assert isinstance(rejected, Rejection) and rejected.reason == "code_unavailable"
    assert "bubblewrap" in rejected.detail


def test_a_bubblewrap_that_fails_its_self_test_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    outcome = sandboxed("print('ran')")
    assert outcome.status == "unavailable" and "self-test" in outcome.stderr and "namespace" in outcome.stderr
