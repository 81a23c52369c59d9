"""A preloaded interpreter that forks one fresh process per command: `python -m nrr_engine ...` without paying
the interpreter start and the engine's imports (~0.6 s, more under load) for each of the kill tests' runs.

Run as a script, it imports the engine and waits for commands on stdin (one JSON line: module, args, env, cwd).
For each it forks a child that leaves the loop, takes its own stdin (/dev/null), stdout and stderr (pipes),
environment and working folder, and runs the module as `python -m MODULE ARGS` would, to a normal interpreter exit
(atexit handlers, buffers flushed, SQLite connections closed). The server relays the child's output, line by line,
tagged: "P pid", "O line" (stdout), "E line" (stderr), "X returncode" (after the child was reaped; -9 when killed).
The child is an ordinary process: SIGKILL from outside ends it as it ends any other; the engine is never told.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Where the engine's own processes spend their first ~0.6 s. Importing them before the fork changes no state:
# module code only defines things (the public-suffix tables, built once, are the same in every process).
PRELOAD = ("nrr_engine.cli", "nrr_engine.engine", "nrr_engine.report", "nrr_engine.testing.salesforce_double",
           "simple_salesforce", "tldextract")


# ---- the client side (the test) ----------------------------------------------------------------------

@dataclass
class Child:
    """One command the server forked: its pid, and (once it ended) its exit code, stdout and stderr."""

    pid: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    returncode: int | None = None


class ForkServer:
    """The preloaded interpreter in a process of its own; one command at a time (a thread each to run two)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lock = threading.Lock()
        ready = self.proc.stdout.readline()
        assert ready == "ready\n", f"the fork server did not start: {ready!r} (exit {self.proc.poll()})"

    def start(self, module: str, args: list[str], env: dict | None = None, cwd: Path | None = None) -> "_Running":
        """Fork a child for `python -m module args` (in this process's environment and folder unless given): an
        iterator over its ("O"|"E", line) as they come."""
        self.lock.acquire()
        try:
            self.proc.stdin.write(json.dumps({"module": module, "args": args,
                                              "env": dict(os.environ) if env is None else env,
                                              "cwd": str(cwd) if cwd else os.getcwd()}) + "\n")
            tag, _, rest = self.proc.stdout.readline().partition(" ")
            assert tag == "P", f"the fork server answered {tag!r} {rest!r}"
        except BaseException:
            self.lock.release()
            raise
        return _Running(self, Child(int(rest)))

    def run(self, module: str, args: list[str], env: dict | None = None, cwd: Path | None = None,
            timeout: float = 300) -> Child:
        """Fork a child and wait for it to end (SIGKILL after `timeout` seconds, as an error)."""
        running = self.start(module, args, env, cwd)
        timer = threading.Timer(timeout, running.kill)
        timer.start()
        try:
            child = running.finish()
        finally:
            timer.cancel()
        assert child.returncode != -signal.SIGKILL, f"{module} {' '.join(args)}: still running after {timeout} s"
        return child

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


class _Running:
    """The lines of a running child, as an iterator; the child is done when the iterator is exhausted."""

    def __init__(self, server: ForkServer, child: Child):
        self.server, self.child, self.done = server, child, False

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, str]:
        if self.done:
            raise StopIteration
        line = self.server.proc.stdout.readline()
        tag, text = line[:1], line[2:]
        if tag == "X" or not line:
            self.child.returncode = int(text) if line else -1
            self.done = True
            self.server.lock.release()
            raise StopIteration
        text = json.loads(text)
        (self.child.stdout if tag == "O" else self.child.stderr).append(text)
        return tag, text

    def kill(self) -> bool:
        """SIGKILL the child if it has not been reaped yet; True when it was still there to kill."""
        if self.done:
            return False
        try:
            os.kill(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def finish(self) -> Child:
        for _ in self:
            pass
        return self.child


# ---- the server side (this file run as a script) -------------------------------------------------------

def _serve():
    """The loop: returns, in a forked child, the command that child is to run; in the server, at end of input."""
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)
    from nrr_engine.hierarchy import normalise
    normalise._psl()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        o_read, o_write = os.pipe()
        e_read, e_write = os.pipe()
        out.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(o_read)
            os.close(e_read)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(o_write, 1)
            os.dup2(e_write, 2)
            for fd in (null, o_write, e_write):
                os.close(fd)
            return cmd
        os.close(o_write)
        os.close(e_write)
        out.write(f"P {pid}\n")
        out.flush()
        _relay(out, {o_read: "O", e_read: "E"})
        _, status = os.waitpid(pid, 0)
        out.write(f"X {os.waitstatus_to_exitcode(status)}\n")
        out.flush()
    return None


def _relay(out, tags: dict[int, str]) -> None:
    """Copy the child's output, a whole line at a time, until both pipes are closed (by the child and by anything
    it started, as a pipe from Popen would wait for)."""
    sel = selectors.DefaultSelector()
    partial = {fd: b"" for fd in tags}
    for fd in tags:
        sel.register(fd, selectors.EVENT_READ)
    while partial:
        for key, _ in sel.select():
            fd = key.fd
            data = os.read(fd, 65536)
            if not data:
                if partial[fd]:
                    out.write(f"{tags[fd]} {json.dumps(partial[fd].decode(errors='replace'))}\n")
                sel.unregister(fd)
                os.close(fd)
                del partial[fd]
                continue
            *lines, partial[fd] = (partial[fd] + data).split(b"\n")
            for ln in lines:
                out.write(f"{tags[fd]} {json.dumps(ln.decode(errors='replace') + chr(10))}\n")
        out.flush()


def _child(cmd: dict) -> None:
    """In the forked child: become `python -m MODULE ARGS` in the command's folder and environment."""
    import importlib
    import runpy
    # sys.stdout and sys.stderr already write to fds 1 and 2 (the child's pipes now), buffered as Python buffers
    # a pipe; stdin's buffer may hold the server's next command: a fresh one on /dev/null
    sys.stdin = open(0, closefd=False)
    os.environ.clear()
    os.environ.update(cmd["env"])
    os.chdir(cmd["cwd"])
    module = cmd["module"]
    if module == "nrr_engine":
        sys.argv = ["nrr-engine", *cmd["args"]]
        runpy.run_module("nrr_engine", run_name="__main__", alter_sys=True)
    else:
        sys.argv = [module, *cmd["args"]]
        raise SystemExit(importlib.import_module(module).main(cmd["args"]))


if __name__ == "__main__":
    command = _serve()
    if command is not None:
        _child(command)
