"""Small child programs for the supervisor tests, run as `python children.py KIND [ARGS]`.

Each prints `ready` on stdout once it is set up, so a test can wait for that line.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable


def ready() -> None:
    print("ready", flush=True)


def block() -> None:
    """Block until a signal ends it."""
    ready()
    while True:
        signal.pause()


def ignore_term() -> None:
    """Ignore SIGTERM, so only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    block()


def exit_with(code: str) -> None:
    sys.exit(int(code))


def report_signals() -> None:
    """Print the name of each SIGHUP, SIGUSR1 or SIGUSR2 it gets; block."""

    def report(signum: int, frame: object) -> None:
        print("got", signal.Signals(signum).name, flush=True)

    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, report)
    block()


def kill_self(name: str) -> None:
    """Die by the signal `name`, such as SIGKILL."""
    os.kill(os.getpid(), signal.Signals[name])
    block()


def flood() -> None:
    """Write 1 MB without a newline, then a numbered line every 20 ms, forever."""
    sys.stdout.buffer.write(b"x" * 1_000_000)
    sys.stdout.buffer.flush()
    count = 0
    while True:
        count += 1
        sys.stdout.buffer.write(b"\ntick %d" % count)
        sys.stdout.buffer.flush()
        time.sleep(0.02)


def invalid_utf8() -> None:
    """Write a line of bytes that are not UTF-8 on each stream, then block."""
    sys.stdout.buffer.write(b"bad \xff\xfe bytes\n")
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(b"err \xc3\x28 line\n")
    sys.stderr.buffer.flush()
    block()


def hold_port() -> None:
    """Listen on WORKER_METRICS_PORT on 127.0.0.1 and serve nothing."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(os.environ["WORKER_METRICS_PORT"])))
    listener.listen()
    block()


def show_env(*argv: str) -> None:
    """Print the argv it got and the variables the supervisor sets, then block."""
    print("argv", *argv, flush=True)
    for name in ("WORKER_METRICS_PORT", "WORKER_INDEX", "PYTHONUNBUFFERED"):
        print(name, os.environ.get(name), flush=True)
    block()


def orphan(seconds: str, pidfile: str) -> None:
    """Double-fork a grandchild that lives `seconds` and exits, so it is orphaned; then block.

    The grandchild writes its pid to `pidfile` first, so a test can find the pid to watch.
    """
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            with open(pidfile + ".tmp", "w") as file:
                file.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            time.sleep(float(seconds))
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    block()


KINDS: dict[str, Callable[..., None]] = {
    "block": block,
    "ignore-term": ignore_term,
    "exit": exit_with,
    "report-signals": report_signals,
    "kill-self": kill_self,
    "flood": flood,
    "invalid-utf8": invalid_utf8,
    "hold-port": hold_port,
    "show-env": show_env,
    "orphan": orphan,
}

if __name__ == "__main__":
    KINDS[sys.argv[1]](*sys.argv[2:])
