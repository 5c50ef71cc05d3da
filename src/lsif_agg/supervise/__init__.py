"""The supervisor wing: spawn, watch, restart, stop and reap the worker and server processes."""

from lsif_agg.supervise.process import ExitCause, ProcessSpec, ProcessState, ProcessView
from lsif_agg.supervise.supervisor import Supervisor

__all__ = ["ExitCause", "ProcessSpec", "ProcessState", "ProcessView", "Supervisor"]
