"""llama.cpp in a child process of the benchmark actor: a native crash costs one point.

The actor holds what is expensive to rebuild (IREE's resident weights, loaded modules,
XLA's compiled graphs). llama.cpp is native code this project does not control, and on
some CPUs it crashes (its AMX path segfaults on Sapphire Rapids, `workers.runtimes.llamacpp`);
in the actor's process that crash would take all of it down. So the model, its
contexts, the quantizer and the timed loop run in a child (`python -m
workers.runtimes.llamacpp_process`), which the actor drives over a pipe: one request a call,
the whole timed loop (`workers.runtimes.session.greedy_decode` under
`workers.core.host.HostSampler`) inside the child, so no pipe round trip is ever timed.

Where the child dies, `LlamaCppProcess` raises `NativeCrash` naming the signal and
the function it died in, from the child's crash report: the native backtrace its
fatal-signal handler writes (`backtrace_symbols_fd`, exported symbols only, names
demangled with `c++filt` where it is installed) and faulthandler's Python frames.
The sweep records the point as `runtime_error`; the next llama.cpp point starts a new
child (and loads its model again), and the IREE points go on with their weights.

Every request carries the CPUs and the niceness the actor's point runs at
(`grid.threads` pins the actor's threads, `bench.priority` sets their niceness); the
child applies both to all its threads before it acts, so llama.cpp's threads run where
the point's would.

`SWEEP_LLAMACPP_FAULT=<request>` in the child's environment makes it crash with
SIGSEGV in a native call when it receives that request (`decode`, `load`, ...): how
the tests check that a crash costs one point and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from workers.tasks import FAULT_ENV

_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `workers`
# Frames of the crash report that are the handler's own, the interpreter's or libc's:
# the function named is the first frame outside these.
_PLUMBING = re.compile(r"libffi|_ctypes|libpython|/python3|libc\.so|ld-linux|\(\+0x")


class NativeCrash(RuntimeError):
    """llama.cpp's process died of a signal: the point is lost, the actor is not."""


class LlamaCppProcess:
    """The actor's side: requests to the child, started on first use and again after a
    crash. Methods mirror `workers.runtimes.llamacpp.LlamaCppRunner` where they run there."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._conn: _Pipe | None = None
        self._report: Path | None = None
        self.num_uploads = 0  # model loads, all children together

    def call(self, request: str, *args: Any) -> Any:
        """Runs `request` in the child; its exception is raised here, its death as
        NativeCrash."""
        conn = self._connect()
        cpus, nice = sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0)
        try:
            conn.send((request, args, cpus, nice))
            ok, value = conn.recv()
        except (EOFError, OSError):
            raise self._crashed(request) from None
        if not ok:
            raise value
        if request == "load" and value > 0:
            self.num_uploads += 1
        return value

    def close(self) -> None:
        """Ends the child (its model and contexts go with it)."""
        if self._child is not None:
            with contextlib.suppress(OSError):
                assert self._conn is not None
                self._conn.close()
            self._child.kill()
            self._child.wait()
        self._forget()

    def _connect(self) -> _Pipe:
        if self._child is not None and self._child.poll() is None:
            assert self._conn is not None
            return self._conn
        self._forget()
        down_r, down_w = os.pipe()  # actor -> child
        up_r, up_w = os.pipe()  # child -> actor
        fd, name = tempfile.mkstemp(prefix="llamacpp-crash-", suffix=".txt")
        os.close(fd)
        path = os.pathsep.join(filter(None, (str(_ROOT), os.environ.get("PYTHONPATH"))))
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.runtimes.llamacpp_process",
                str(down_r),
                str(up_w),
                name,
            ],
            pass_fds=(down_r, up_w),
            env={**os.environ, "PYTHONPATH": path},
            stdin=subprocess.DEVNULL,
        )
        os.close(down_r), os.close(up_w)
        self._conn = _Pipe(up_r, down_w)
        self._report = Path(name)
        return self._conn

    def _crashed(self, request: str) -> NativeCrash:
        assert self._child is not None
        try:
            code = self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:  # the pipe broke but the child lives: end it
            self._child.kill()
            code = self._child.wait()
        report = self._report.read_text(errors="replace") if self._report else ""
        self._forget()
        return NativeCrash(describe_crash(code, report, request))

    def _forget(self) -> None:
        if self._report is not None:
            self._report.unlink(missing_ok=True)
        self._child = self._conn = self._report = None


class _Pipe:
    """One duplex channel over two one-way pipes, with multiprocessing's framing and pickle."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = Connection(read_fd, writable=False)
        self._writer = Connection(write_fd, readable=False)

    def send(self, obj: Any) -> None:
        self._writer.send(obj)

    def recv(self) -> Any:
        return self._reader.recv()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def describe_crash(code: int, report: str, request: str) -> str:
    """What killed the child, in one line: the signal, the function, the request."""
    what = f"{signal.Signals(-code).name} (signal {-code})" if code < 0 else f"exit code {code}"
    where = crash_site(report)
    at = f" in {where}" if where else ""
    return (
        f"llama.cpp's process died of {what}{at} during `{request}`; the point is lost, "
        "the benchmark actor and its other runtimes' weights are not"
    )


def crash_site(report: str) -> str | None:
    """The first named native frame outside the interpreter and libc (demangled), else
    the innermost Python frame of the crashed thread."""
    for line in report.splitlines():
        match = re.match(r"(\S+)\((\w+)\+0x[0-9a-f]+\)", line.strip())
        if match and not _PLUMBING.search(line):
            return f"{_demangle(match.group(2))} ({Path(match.group(1)).name})"
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', report)
    if frames:
        path, number, function = frames[0]  # faulthandler lists the innermost call first
        return f"{function} ({Path(path).name}:{number})"
    return None


def _demangle(symbol: str) -> str:
    tool = shutil.which("c++filt")
    if tool is None or not symbol.startswith("_Z"):
        return symbol
    out = subprocess.run([tool, symbol], capture_output=True, text=True, check=False)
    return out.stdout.strip() or symbol


# --- the child -----------------------------------------------------------------------------


class _Child:
    """The requests the child serves, over one `workers.runtimes.llamacpp.LlamaCppRunner`."""

    def __init__(self) -> None:
        from workers.runtimes.llamacpp import LlamaCppRunner

        self.runner = LlamaCppRunner()

    def quantize(self, src: Path, dst: Path, kind: str) -> None:
        from workers.runtimes.llamacpp import quantize

        quantize(src, dst, kind)

    def load(self, key: str, path: Path, settings: Any) -> float:
        return self.runner.ensure_model(key, path, settings)

    def decode(self, n_ctx: int, prompt: Any, bucket: int, steps: Any) -> tuple[Any, ...]:
        """The timed greedy loop, its host window and llama.cpp's own ms per token."""
        from workers.core.host import HostSampler, settle
        from workers.runtimes.session import greedy_decode

        self.runner.context(n_ctx, threads=len(os.sched_getaffinity(0)))
        session = self.runner.session(steps.warmup_calls)
        settle()
        with HostSampler() as host:
            run = greedy_decode(session, prompt, bucket, steps, host)
        return run, host.window, session.decode_counters_ms()

    def logits(self, tokens: Any, outputs: slice) -> Any:
        """The logits of `outputs` of `tokens` fed from an empty cache."""
        self.runner.clear()
        return self.runner.eval(tokens, outputs)

    def score(self, window: Any) -> Any:
        return self.runner.scorer()(window)

    def settings(self) -> dict[str, Any]:
        """What the resident model runs with, as the row records it."""
        s = self.runner.settings
        return {
            "llamacpp_extra_bufts": s.use_extra_bufts(),
            "llamacpp_flash_attn": s.flash_attn,
            "llamacpp_n_ubatch": s.n_ubatch,
        }


def _align(cpus: list[int], nice: int) -> None:
    """Every thread of this process on `cpus`, at niceness `nice` (the actor's point's)."""
    from workers.core.threads import thread_ids

    for tid in thread_ids():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def _install_crash_report(path: str) -> Any:
    """faulthandler's Python frames and a native backtrace into `path` on a fatal signal;
    returns the handler, which must stay referenced."""
    log = open(path, "w")  # noqa: SIM115 - open for the life of the process
    faulthandler.enable(file=log, all_threads=True)
    libc = ctypes.CDLL(None)
    libc.backtrace.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    libc.backtrace_symbols_fd.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]

    def on_fatal(signum: int) -> None:
        frames = (ctypes.c_void_p * 64)()
        log.write(f"Fatal signal {signum}: native backtrace\n")
        log.flush()
        libc.backtrace_symbols_fd(frames, libc.backtrace(frames, 64), log.fileno())
        faulthandler.dump_traceback(log, all_threads=True)
        log.flush()
        libc.signal(signum, 0)  # SIG_DFL: the faulting instruction runs again and kills

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_fatal)
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        libc.signal(sig, ctypes.cast(handler, ctypes.c_void_p))
    return handler


def _fault() -> None:
    """A native crash, as llama.cpp's would be: a write through a null pointer in C."""
    ctypes.memset(0, 0, 1)


def serve(conn: Any, fault: str | None) -> None:
    """Answers requests until the actor closes the pipe: (True, result) or (False, error)."""
    child: _Child | None = None
    while True:
        try:
            request, args, cpus, nice = conn.recv()
        except EOFError:
            return
        _align(cpus, nice)
        if request == fault:
            _fault()
        try:
            child = child or _Child()
            reply = (True, getattr(child, request)(*args))
        except Exception as e:  # noqa: BLE001 - every error goes back to the actor
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - an error that does not pickle
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


def main(argv: list[str]) -> None:
    read_fd, write_fd, report = int(argv[0]), int(argv[1]), argv[2]
    handler = _install_crash_report(report)  # referenced for the process's life
    serve(_Pipe(read_fd, write_fd), os.environ.get(FAULT_ENV))
    del handler


if __name__ == "__main__":
    main(sys.argv[1:])
