"""The HumanEval sandbox: run one program in a separate, resource-limited interpreter
(:func:`run_program`); a crash, hang, fork bomb or memory bomb fails that program only.

The sandbox, in layers (see docs/humaneval.md for its limits):

* a fresh ``python -I -S -B`` process (isolated mode: no ``PYTHON*`` variables, no user or site
  packages, so no ``sitecustomize`` or ``.pth`` files; standard library only), started in its
  own session (process group) with an environment of only ``PATH``, ``HOME``, ``TMPDIR`` and
  ``LANG`` (no proxies), stdin from ``/dev/null``, stdout and stderr into a size-capped file;
* a temporary working directory, deleted afterwards;
* resource limits set by the child's driver before any candidate code runs (``preexec_fn`` is
  unsafe in a process with threads, such as one running torch): address space, CPU seconds,
  processes (``RLIMIT_NPROC``), file size, open files, no core dumps;
* a wall-clock timeout after which the whole process group is killed (it is also killed when
  the program ends, so left-over children die with it);
* a network namespace without interfaces (``unshare -rn``) where the OS allows it, else none;
* an audit hook (:func:`sys.addaudithook`) in the child that refuses sockets, new processes,
  signals to other processes, ``ctypes`` and file writes outside the working directory: a guard
  against accidents, not a security boundary;
* success needs exit status 0 *and* a per-run token printed by the driver after the program
  returned, so ``sys.exit(0)`` or ``os._exit(0)`` before the tests ran is a failure.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """What one program may use. ``network``: True to try a network namespace (``unshare -rn``)."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 * GiB  # RLIMIT_AS
    nproc: int = 32  # RLIMIT_NPROC (counts all processes of the user; not enforced for root)
    file_bytes: int = 1 << 20  # RLIMIT_FSIZE: output and any file written
    open_files: int = 64  # RLIMIT_NOFILE
    output_chars: int = 2000  # kept of the captured output
    audit: bool = True  # the in-child audit hook (no sockets, processes, ctypes, outside writes)
    network_namespace: bool = True


@dataclass
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | error
    returncode: int | None
    seconds: float
    output: str = ""
    isolation: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """A one-line reason: the status, and the last line of the output when it failed."""
        if self.passed:
            return "passed"
        last = next((line for line in reversed(self.output.splitlines()) if line.strip()), "")
        return f"{self.status}: {last}"[:300] if last else self.status


# Runs in the child before the candidate: limits, audit hook, then the program, then the token.
_DRIVER = r"""
import os, resource, sys
token, mem, cpu, nproc, fsize, nofile, audit = sys.argv[1], *map(int, sys.argv[2:8])
del sys.argv[1:]
for name, value in (("RLIMIT_AS", mem), ("RLIMIT_CPU", cpu), ("RLIMIT_NPROC", nproc),
                    ("RLIMIT_FSIZE", fsize), ("RLIMIT_NOFILE", nofile), ("RLIMIT_CORE", 0)):
    if hasattr(resource, name):
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            soft, hard = resource.getrlimit(getattr(resource, name))
            resource.setrlimit(getattr(resource, name), (min(value, hard) if hard >= 0 else value, hard))
import runpy
if audit:
    home = os.path.realpath(os.getcwd()) + os.sep
    blocked = ("socket.", "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
               "subprocess.", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.", "pty.", "winreg.",
               "webbrowser.", "urllib.Request", "http.client.", "ftplib.", "smtplib.", "telnetlib.")
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    changes = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
               "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile")
    def outside(path):
        if isinstance(path, int):
            return False
        try:
            return not (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(home)
        except Exception:
            return True
    def hook(event, args):
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2] or 0
            if ((isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & writes) and outside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} is not allowed")
        elif event in changes and args and any(outside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
    sys.addaudithook(hook)
runpy.run_path("program.py", run_name="__humaneval__")
sys.stdout.flush()
os.write(1, ("\n" + token + "\n").encode())
"""


@lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """``("unshare", "-rn")`` when this OS lets us start a process without network, else ``()``."""
    tool = shutil.which("unshare")
    if tool is None or not sys.platform.startswith("linux"):
        return ()
    try:
        ok = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (tool, "-rn") if ok.returncode == 0 else ()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(program: str, limits: Limits | None = None) -> Outcome:
    """Run ``program`` in a fresh, limited interpreter in a temporary directory; never raises for
    anything the program does (an error starting the sandbox itself is status ``error``)."""
    limits = limits or Limits()
    start = time.perf_counter()
    token = "scans-humaneval-ok-" + secrets.token_hex(16)
    isolation = ["process group", "rlimits", "python -I -S", "temp dir", "no proxies"]
    prefix = network_namespace_prefix() if limits.network_namespace else ()
    if prefix:
        isolation.append("network namespace")
    if limits.audit:
        isolation.append("audit hook")
    cpu = max(1, math.ceil(limits.timeout_s)) + 1
    args = [str(v) for v in (limits.memory_bytes, cpu, limits.nproc, limits.file_bytes, limits.open_files)]
    command = [*prefix, sys.executable, "-I", "-S", "-B", "-c", _DRIVER, token, *args, str(int(limits.audit))]
    with tempfile.TemporaryDirectory(prefix="scans-humaneval-") as work:
        (Path(work) / "program.py").write_text(program, encoding="utf-8")
        out_path = Path(work) / "output.txt"
        env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        returncode: int | None = None
        status = "failed"
        with out_path.open("wb") as out:
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                return Outcome(
                    False, "error", None, time.perf_counter() - start, f"cannot start: {exc}", isolation
                )
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                _kill_group(proc.pid)  # the program's left-over children die with it
                if returncode is None:
                    proc.wait()
        with out_path.open("rb") as fh:
            raw = fh.read(limits.file_bytes + 4096)
    text = raw.decode("utf-8", errors="replace")
    passed = status != "timeout" and returncode == 0 and text.rstrip().endswith(token)
    if passed:
        status = "passed"
    text = text.replace(token, "").rstrip()
    if status == "timeout":
        text += f"\ntimed out after {limits.timeout_s:g} s"
    if len(text) > limits.output_chars:
        half = limits.output_chars // 2
        text = text[:half] + "\n...[truncated]...\n" + text[-half:]
    return Outcome(passed, status, returncode, round(time.perf_counter() - start, 4), text, isolation)
