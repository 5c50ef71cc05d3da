"""The supervisor wing: spawn, watch, restart, stop and reap the worker and server processes."""
