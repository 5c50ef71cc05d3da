"""lsif_agg: supervise N metrics-serving processes and federate their expositions on one port."""

__version__ = "0.1.0"
