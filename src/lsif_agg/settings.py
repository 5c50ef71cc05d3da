"""Command line and environment: read once at start-up into one immutable Settings.

A flag wins over its environment variable. Every check runs before any process starts, and a
failed check raises SettingsError with one message that names the value and the fix.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

from lsif_agg import __version__

DEFAULT_BASE_PORT = 3187
DEFAULT_SERVER_PORT = 3186
# The in-container Prometheus that lsif_agg replaces listened here, so outer scrape configs keep working.
DEFAULT_LISTEN = "0.0.0.0:9090"
DEFAULT_SCRAPE_TIMEOUT = 5.0
DEFAULT_GRACE_PERIOD = 10.0
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_MAX_EARLY_EXITS = 5
DEFAULT_EARLY_EXIT_SECONDS = 10.0
MAX_PORT = 65535

OnExit = Literal["restart", "exit"]
LogFormat = Literal["text", "json"]


class SettingsError(ValueError):
    """An invalid flag or variable; the message names the value and the fix."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The validated configuration of one lsif_agg run."""

    workers: int
    worker_command: tuple[str, ...]
    server_command: tuple[str, ...] | None
    base_port: int
    server_port: int
    listen_host: str
    listen_port: int
    scrape_timeout: float
    grace_period: float
    on_exit: OnExit
    backoff_initial: float
    backoff_max: float
    max_early_exits: int
    early_exit_seconds: float
    log_format: LogFormat
    log_level: str

    def worker_port(self, index: int) -> int:
        """Return worker `index`'s metrics port: the base port plus the index."""
        return self.base_port + index


def sample_worker_command() -> tuple[str, ...]:
    """Return the command of the sample worker shipped in the package, the embedded default."""
    return (sys.executable, "-m", "lsif_agg.sample_worker", "--port", "{port}", "--worker", "{worker}")


# Each option: flag, variables (first wins), default, help text. The help shows the variables too.
_EPILOG = """\
The worker command follows `--`, for example:
  lsif-agg --workers 4 -- prometheus-node-exporter --web.listen-address=127.0.0.1:{port}
In every argument of a command, {port} becomes the process's metrics port and {worker} its index
("server" for the server). Each process also gets them as WORKER_METRICS_PORT and WORKER_INDEX.
With no worker command, lsif_agg runs its built-in sample worker.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so all errors share one path."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message}. Run lsif-agg --help for the flags.")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lsif-agg",
        description=(
            "Supervise N worker processes (and an optional server) and serve all their "
            "Prometheus metrics, each sample labelled with worker=\"<index>\", on one port."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--version", action="version", version=f"lsif-agg {__version__}")

    # Processes and their commands.
    add("--workers", metavar="N",
        help="number of worker processes, 0 or more "
             "(env WORKERS, LSIF_NUM_WORKERS or NUM_WORKERS; default 1)")
    add("--server-command", metavar="CMD",
        help="command of the optional server process, split like a shell would "
             "(env SERVER_COMMAND; default none)")
    add("--servers", metavar="N",
        help="number of server processes, 0 or 1 (env LSIF_NUM_SERVERS; "
             "default 1 when a server command is given, else 0)")

    # Ports and the federation endpoint.
    add("--base-port", metavar="PORT",
        help=f"metrics port of worker 0; worker i gets base + i "
             f"(env LSIF_AGG_BASE_PORT; default {DEFAULT_BASE_PORT})")
    add("--server-port", metavar="PORT",
        help=f"metrics port of the server process "
             f"(env LSIF_AGG_SERVER_PORT; default {DEFAULT_SERVER_PORT})")
    add("--listen", metavar="HOST:PORT",
        help=f"address of the federation endpoint; use [::1]:PORT for IPv6 "
             f"(env LSIF_AGG_LISTEN; default {DEFAULT_LISTEN})")
    add("--scrape-timeout", metavar="SECONDS",
        help=f"deadline of one scrape of all targets, when the scraper sends none "
             f"in X-Prometheus-Scrape-Timeout-Seconds "
             f"(env LSIF_AGG_SCRAPE_TIMEOUT; default {DEFAULT_SCRAPE_TIMEOUT:g} s)")

    # Stopping and restarting.
    add("--grace-period", metavar="SECONDS",
        help=f"time between SIGTERM and SIGKILL when stopping processes "
             f"(env LSIF_AGG_GRACE_PERIOD; default {DEFAULT_GRACE_PERIOD:g} s)")
    add("--on-exit", metavar="POLICY",
        help="what to do when a process exits: 'restart' it with backoff, or 'exit' "
             "lsif_agg with that process's status (env LSIF_AGG_ON_EXIT; default restart)")
    add("--backoff-initial", metavar="SECONDS",
        help=f"first restart delay, doubled after each early exit "
             f"(env LSIF_AGG_BACKOFF_INITIAL; default {DEFAULT_BACKOFF_INITIAL:g} s)")
    add("--backoff-max", metavar="SECONDS",
        help=f"maximum restart delay (env LSIF_AGG_BACKOFF_MAX; default {DEFAULT_BACKOFF_MAX:g} s)")
    add("--max-early-exits", metavar="N",
        help=f"early exits in a row after which a process is marked failed and not restarted; "
             f"0 restarts forever (env LSIF_AGG_MAX_EARLY_EXITS; default {DEFAULT_MAX_EARLY_EXITS})")
    add("--early-exit-seconds", metavar="SECONDS",
        help=f"an exit within this time after start counts as early "
             f"(env LSIF_AGG_EARLY_EXIT_SECONDS; default {DEFAULT_EARLY_EXIT_SECONDS:g} s)")

    # Logs.
    add("--log-format", metavar="FORMAT",
        help="'text' or 'json' (env LSIF_AGG_LOG_FORMAT; default text)")
    add("--log-level", metavar="LEVEL",
        help="debug, info, warning or error (env LSIF_AGG_LOG_LEVEL; default info)")

    add("command", nargs=argparse.REMAINDER,
        help="worker command after `--` (env WORKER_COMMAND, split like a shell would; "
             "default: the built-in sample worker)")
    return parser


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build Settings from `argv` (without the program name) and `environ`; raise SettingsError."""
    args = _build_parser().parse_args(list(argv))

    def pick(flag: str, *variables: str) -> tuple[str | None, str]:
        """Return the value and where it came from: the flag, else the first variable that is set."""
        flag_value: str | None = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if flag_value is not None:
            return flag_value, flag
        for name in variables:
            if environ.get(name, "") != "":
                return environ[name], name
        return None, ""

    workers = _parse_int(*pick("--workers", "WORKERS", "LSIF_NUM_WORKERS", "NUM_WORKERS"),
                         default=1, minimum=0, description="worker count")
    worker_command = _parse_worker_command(args.command, environ)
    server_command = _parse_command(*pick("--server-command", "SERVER_COMMAND"))
    servers_text, servers_source = pick("--servers", "LSIF_NUM_SERVERS")
    servers = _parse_int(servers_text, servers_source,
                         default=1 if server_command else 0, minimum=0, description="server count")
    if servers > 1:
        raise SettingsError(
            f"invalid server count {servers} from {servers_source}: lsif_agg runs at most one "
            f"server process. Set {servers_source} to 0 or 1.")
    if servers == 1 and not server_command:
        raise SettingsError(
            f"{servers_source} asks for a server process, but no server command is set. "
            f"Pass --server-command or set SERVER_COMMAND, or set {servers_source}=0.")

    base_port = _parse_port(*pick("--base-port", "LSIF_AGG_BASE_PORT"), DEFAULT_BASE_PORT)
    server_port = _parse_port(*pick("--server-port", "LSIF_AGG_SERVER_PORT"), DEFAULT_SERVER_PORT)
    listen_host, listen_port = _parse_listen(*pick("--listen", "LSIF_AGG_LISTEN"))

    settings = Settings(
        workers=workers,
        worker_command=worker_command,
        server_command=server_command if servers == 1 else None,
        base_port=base_port,
        server_port=server_port,
        listen_host=listen_host,
        listen_port=listen_port,
        scrape_timeout=_parse_seconds(*pick("--scrape-timeout", "LSIF_AGG_SCRAPE_TIMEOUT"),
                                      DEFAULT_SCRAPE_TIMEOUT, positive=True),
        grace_period=_parse_seconds(*pick("--grace-period", "LSIF_AGG_GRACE_PERIOD"),
                                    DEFAULT_GRACE_PERIOD, positive=False),
        on_exit=_parse_choice(*pick("--on-exit", "LSIF_AGG_ON_EXIT"), ("restart", "exit")),  # type: ignore[arg-type]
        backoff_initial=_parse_seconds(*pick("--backoff-initial", "LSIF_AGG_BACKOFF_INITIAL"),
                                       DEFAULT_BACKOFF_INITIAL, positive=True),
        backoff_max=_parse_seconds(*pick("--backoff-max", "LSIF_AGG_BACKOFF_MAX"),
                                   DEFAULT_BACKOFF_MAX, positive=True),
        max_early_exits=_parse_int(*pick("--max-early-exits", "LSIF_AGG_MAX_EARLY_EXITS"),
                                   default=DEFAULT_MAX_EARLY_EXITS, minimum=0,
                                   description="early exit limit"),
        early_exit_seconds=_parse_seconds(
            *pick("--early-exit-seconds", "LSIF_AGG_EARLY_EXIT_SECONDS"),
            DEFAULT_EARLY_EXIT_SECONDS, positive=False),
        log_format=_parse_choice(*pick("--log-format", "LSIF_AGG_LOG_FORMAT"), ("text", "json")),  # type: ignore[arg-type]
        log_level=_parse_choice(*pick("--log-level", "LSIF_AGG_LOG_LEVEL"),
                                ("info", "debug", "warning", "error")),
    )
    if settings.backoff_initial > settings.backoff_max:
        raise SettingsError(
            f"initial backoff {settings.backoff_initial:g} s is longer than the maximum backoff "
            f"{settings.backoff_max:g} s. Lower --backoff-initial or raise --backoff-max.")
    _check_ports(settings)
    return settings


def _parse_int(text: str | None, source: str, *, default: int, minimum: int, description: str) -> int:
    if text is None:
        return default
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise SettingsError(
            f"invalid {description} {text!r} from {source}: expected a whole number "
            f"of at least {minimum}.") from None
    if value < minimum:
        raise SettingsError(
            f"invalid {description} {value} from {source}: it must be at least {minimum}.")
    return value


def _parse_seconds(text: str | None, source: str, default: float, *, positive: bool) -> float:
    if text is None:
        return default
    try:
        value = float(text.strip())
    except ValueError:
        raise SettingsError(
            f"invalid duration {text!r} from {source}: expected a number of seconds "
            f"such as 2.5.") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise SettingsError(f"invalid duration {text!r} from {source}: it must be {bound} seconds.")
    return value


def _parse_choice(text: str | None, source: str, choices: tuple[str, ...]) -> str:
    if text is None:
        return choices[0]
    value = text.strip().lower()
    if value not in choices:
        raise SettingsError(
            f"invalid value {text!r} from {source}: choose one of {', '.join(choices)}.")
    return value


def _parse_port(text: str | None, source: str, default: int) -> int:
    if text is None:
        return default
    port = _parse_int(text, source, default=default, minimum=1, description="port")
    if port > MAX_PORT:
        raise SettingsError(f"invalid port {port} from {source}: a port is 1 to {MAX_PORT}.")
    return port


def _parse_listen(text: str | None, source: str) -> tuple[str, int]:
    if text is None:
        text, source = DEFAULT_LISTEN, "the default"
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text:
        raise SettingsError(
            f"invalid listen address {text!r} from {source}: expected HOST:PORT, "
            f"such as 0.0.0.0:9090 or [::1]:9090.")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, _parse_port(port_text, source, DEFAULT_BASE_PORT)


def _parse_command(text: str | None, source: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        words = tuple(shlex.split(text))
    except ValueError as error:
        raise SettingsError(
            f"invalid command {text!r} from {source}: {error}. Check its quotes.") from None
    if not words:
        raise SettingsError(f"empty command from {source}: give a program to run, or unset it.")
    return words


def _parse_worker_command(remainder: list[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    words = remainder[1:] if remainder[:1] == ["--"] else remainder
    if remainder:
        if not words or not words[0].strip():
            raise SettingsError(
                "empty worker command after `--`: give a program to run, such as "
                "`-- prometheus-node-exporter --web.listen-address=127.0.0.1:{port}`.")
        return tuple(words)
    if "WORKER_COMMAND" in environ:
        command = _parse_command(environ["WORKER_COMMAND"], "WORKER_COMMAND")
        if command is None:
            raise SettingsError("empty command from WORKER_COMMAND: give a program, or unset it.")
        return command
    return sample_worker_command()


def _check_ports(settings: Settings) -> None:
    """Reject worker ports past 65535 or overlapping the listen or server port."""
    if settings.workers == 0:
        last = None
    else:
        last = settings.worker_port(settings.workers - 1)
        if last > MAX_PORT:
            raise SettingsError(
                f"invalid port range: {settings.workers} workers from base port "
                f"{settings.base_port} need ports up to {last}, past {MAX_PORT}. "
                f"Lower --base-port or --workers.")

    worker_ports = range(settings.base_port, (last or settings.base_port - 1) + 1)
    if last == settings.base_port:
        port_text = f"worker port {last}"
    else:
        port_text = f"worker ports {settings.base_port}-{last}"
    if settings.listen_port in worker_ports:
        raise SettingsError(
            f"listen port {settings.listen_port} overlaps the {port_text}. "
            f"Move --listen or --base-port.")
    if settings.server_command is not None:
        if settings.server_port in worker_ports:
            raise SettingsError(
                f"server port {settings.server_port} overlaps the {port_text}. "
                f"Move --server-port or --base-port.")
        if settings.server_port == settings.listen_port:
            raise SettingsError(
                f"server port {settings.server_port} is also the listen port. "
                f"Move --server-port or --listen.")


def read_settings() -> Settings:
    """Parse sys.argv and os.environ; on invalid input print the message and exit with status 2."""
    try:
        return parse_settings(sys.argv[1:], os.environ)
    except SettingsError as error:
        print(f"lsif-agg: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
