"""Build the ProcessSpec of the server and of each worker from the settings."""

from __future__ import annotations

from collections.abc import Sequence

from lsif_agg.settings import Settings
from lsif_agg.supervise.process import ProcessSpec

SERVER_NAME = "server"


def worker_spec(settings: Settings, index: int) -> ProcessSpec:
    """Return the spec of worker `index`: name worker-<index>, label "<index>", port base + index."""
    port = settings.worker_port(index)
    return ProcessSpec(
        name=f"worker-{index}",
        label=str(index),
        index=index,
        port=port,
        argv=substitute(settings.worker_command, port=port, worker=str(index)),
        env=child_env(port=port, worker=str(index)),
    )


def server_spec(settings: Settings) -> ProcessSpec | None:
    """Return the spec of the server process, or None when no server command is set."""
    if settings.server_command is None:
        return None
    port = settings.server_port
    return ProcessSpec(
        name=SERVER_NAME,
        label=SERVER_NAME,
        index=None,
        port=port,
        argv=substitute(settings.server_command, port=port, worker=SERVER_NAME),
        env=child_env(port=port, worker=SERVER_NAME),
    )


def substitute(command: Sequence[str], *, port: int, worker: str) -> tuple[str, ...]:
    """Replace {port} and {worker} in every word; other braces stay as they are."""
    return tuple(
        word.replace("{port}", str(port)).replace("{worker}", worker) for word in command
    )


def child_env(*, port: int, worker: str) -> dict[str, str]:
    """Return the variables added to a child's environment."""
    # Python children would otherwise buffer their output in blocks once it goes to a pipe,
    # and their lines would reach lsif_agg's output late and out of order.
    return {
        "WORKER_METRICS_PORT": str(port),
        "WORKER_INDEX": worker,
        "PYTHONUNBUFFERED": "1",
    }
