"""The embedded default worker: a small prometheus_client program whose metrics move over time.

lsif_agg runs it when no worker command is given, so `python -m lsif_agg` alone serves the merged
metrics of real processes. It imitates an LSIF upload worker.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from types import FrameType

from prometheus_client import Counter, Gauge, Histogram, Summary, start_http_server

UPLOADS = Counter(
    "lsif_sample_uploads_processed", "Uploads this worker has processed.", ["outcome"])
QUEUE_DEPTH = Gauge("lsif_sample_queue_depth", "Uploads waiting in this worker's queue.")
DURATION = Histogram(
    "lsif_sample_upload_duration_seconds", "Time spent processing one upload.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
SIZE = Summary("lsif_sample_upload_size_bytes", "Size of the uploads processed.")

# One simulated upload per tick keeps the series moving without using a noticeable share of a core.
TICK_SECONDS = 0.2


def simulate_upload(rng: random.Random) -> None:
    """Record one made-up upload in every metric."""
    duration = rng.expovariate(1 / 0.05)
    DURATION.observe(duration)
    SIZE.observe(rng.randint(1_000, 5_000_000))
    UPLOADS.labels(outcome="failed" if rng.random() < 0.05 else "succeeded").inc()
    QUEUE_DEPTH.set(rng.randint(0, 20))


def main() -> None:
    parser = argparse.ArgumentParser(description="lsif_agg's sample worker.")
    parser.add_argument("--port", type=int, required=True, help="metrics port")
    parser.add_argument("--worker", default="0", help="worker index, seeds the numbers")
    parser.add_argument("--host", default="127.0.0.1", help="metrics address (default 127.0.0.1)")
    args = parser.parse_args()

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # Labelled series exist only once touched; creating both now keeps the first scrape complete.
    for outcome in ("succeeded", "failed"):
        UPLOADS.labels(outcome=outcome)

    start_http_server(args.port, addr=args.host)
    print(f"sample worker {args.worker} serving metrics on {args.host}:{args.port}", flush=True)

    rng = random.Random(f"{args.worker}-{time.time_ns()}")
    while not stop.wait(TICK_SECONDS):
        simulate_upload(rng)
    print(f"sample worker {args.worker} stopping", flush=True)


if __name__ == "__main__":
    main()
