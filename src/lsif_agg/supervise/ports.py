"""Check that a process's metrics port is free before the process is spawned."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def port_error(port: int) -> OSError | None:
    """Try to bind `port` on 127.0.0.1 now; return the error if that failed, else None.

    SO_REUSEADDR lets the test bind past connections in TIME_WAIT (left by scrapes of the
    previous run), which the worker's own server would bind past too. On Linux a socket still
    listening on the port, on 127.0.0.1 or on the wildcard address, makes the bind fail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as error:
            return error
    return None
