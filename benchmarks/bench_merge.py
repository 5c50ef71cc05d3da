"""Measure lsif_agg.exposition.merge on 16 targets of 10,000 samples each.

Run: .venv/bin/python benchmarks/bench_merge.py
It prints samples merged per second on one core for well-formed input in the negotiated
format (whole merge; first merge and steady state; replicas that share their series, and
targets that share none),
for well-formed input converted between formats, and for input that needs every quirk handled.
Converted input takes the fast path too, with its timestamps converted by the kernel.
Results are recorded in docs/benchmarks-merge.md.
"""

import statistics
import time
from collections.abc import Callable

from lsif_agg.exposition import MergeResult, OutputFormat, TargetBody, merge

TARGETS = 16
FAMILIES = 100
SERIES_PER_FAMILY = 100  # 100 x 100 = 10,000 samples per target
ROUNDS = 7
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def clean_body(target: int, openmetrics: bool = False) -> bytes:
    """Build a body shaped like a client library's: HELP, TYPE, two labels per series."""
    lines = []
    for family in range(FAMILIES):
        # An OpenMetrics counter family drops the _total that its samples carry.
        name = f"app_requests_{family}" if openmetrics else f"app_requests_{family}_total"
        lines.append(f"# HELP {name} Requests handled, by method and path.")
        lines.append(f"# TYPE {name} counter")
        for series in range(SERIES_PER_FAMILY):
            lines.append(
                f'app_requests_{family}_total{{method="GET",path="/api/v1/items/{series}"}} '
                f"{target * 1000 + series}"
            )
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode()


def distinct_body(target: int) -> bytes:
    """Return a clean body whose series differ from every other target's, in label values.

    Replicas of one program repeat each other's series, which the kernel uses to check only
    values; this body shows the speed without that shortcut.
    """
    return clean_body(target).replace(b'path="/api/v1/items/', b'path="/api/v%d/items/' % target)


def stamped_body(target: int, openmetrics: bool = False) -> bytes:
    """Return a clean body whose every sample has a timestamp, which a conversion rewrites."""
    stamp = " 1700000000.123" if openmetrics else " 1700000000123"
    lines = clean_body(target, openmetrics).decode().splitlines()
    stamped = [line if line.startswith("#") else line + stamp for line in lines]
    return ("\n".join(stamped) + "\n").encode()


def quirky_body(target: int) -> bytes:
    """Build an OpenMetrics body where every line needs the general reader, merged into text."""
    lines = []
    for family in range(FAMILIES):
        name = f"app_jobs_{family}"
        lines.append(f"# HELP {name} Jobs, with \\\\ and \\n in the help.")
        lines.append(f"# TYPE {name} counter")
        lines.append("# a comment that is not metadata")
        for series in range(SERIES_PER_FAMILY):
            value = ("NaN", "+Inf", "-0", "1e-320", str(series))[series % 5]
            lines.append(
                f'{name}_total{{ path = "/a,b}}{{#\\"{series}\\"" ,\tworker="w{target}",}}'
                f"\t{value}  1700000000.{series:03d} # {{trace_id=\"t{series}\"}} 1"
            )
            if series % 10 == 0:
                lines.append("")
    lines.append("# EOF")
    return ("\r\n".join(lines) + "\r\n").encode()


def measure(run: Callable[[], MergeResult], samples: int) -> tuple[float, float]:
    """Return (samples/s of the first run, median samples/s of the next ROUNDS runs)."""
    start = time.perf_counter()
    result = run()
    first = time.perf_counter() - start
    assert sum(outcome.samples for outcome in result.outcomes) == samples, result.outcomes

    durations = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        durations.append(time.perf_counter() - start)
    return samples / first, samples / statistics.median(durations)


def main() -> None:
    samples = TARGETS * FAMILIES * SERIES_PER_FAMILY
    clean = [TargetBody(str(i), clean_body(i), TEXT) for i in range(TARGETS)]
    clean_openmetrics = [
        TargetBody(str(i), clean_body(i, openmetrics=True), OPENMETRICS) for i in range(TARGETS)
    ]
    stamped = [TargetBody(str(i), stamped_body(i), TEXT) for i in range(TARGETS)]
    stamped_openmetrics = [
        TargetBody(str(i), stamped_body(i, openmetrics=True), OPENMETRICS) for i in range(TARGETS)
    ]
    quirky = [TargetBody(str(i), quirky_body(i), OPENMETRICS) for i in range(TARGETS)]
    megabytes = sum(len(t.body) for t in clean) / 1e6

    first, steady = measure(lambda: merge(clean, OutputFormat.TEXT), samples)
    print(f"clean, text to text ({megabytes:.1f} MB, fast path): first {first / 1e6:.2f} M samples/s, "
          f"steady {steady / 1e6:.2f} M samples/s")

    distinct = [TargetBody(str(i), distinct_body(i), TEXT) for i in range(TARGETS)]
    first, steady = measure(lambda: merge(distinct, OutputFormat.TEXT), samples)
    print(f"clean, text to text, no series shared between targets: {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(clean_openmetrics, OutputFormat.OPENMETRICS), samples)
    print(f"clean, OpenMetrics to OpenMetrics (fast path): {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(clean, OutputFormat.OPENMETRICS), samples)
    print(f"clean, text to OpenMetrics (fast path): {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(clean_openmetrics, OutputFormat.TEXT), samples)
    print(f"clean, OpenMetrics to text (fast path): {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(stamped, OutputFormat.OPENMETRICS), samples)
    print(f"clean with timestamps, text to OpenMetrics (fast path): {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(stamped_openmetrics, OutputFormat.TEXT), samples)
    print(f"clean with timestamps, OpenMetrics to text (fast path): {steady / 1e6:.2f} M samples/s")

    first, steady = measure(lambda: merge(quirky, OutputFormat.TEXT), samples)
    print(f"quirky, OpenMetrics to text (general path): {steady / 1e6:.3f} M samples/s")


if __name__ == "__main__":
    main()
