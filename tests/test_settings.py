"""Command line and environment: every flag, every variable, every invalid input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lsif_agg import __version__
from lsif_agg.settings import SettingsError, parse_settings, sample_worker_command


def test_defaults_run_sample_worker() -> None:
    settings = parse_settings([], {})
    assert settings.workers == 1
    assert settings.worker_command == sample_worker_command()
    assert settings.server_command is None
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9090)
    assert settings.base_port == 3187
    assert settings.server_port == 3186


def test_worker_command_after_double_dash() -> None:
    settings = parse_settings(["--workers", "4", "--", "node", "worker.js", "--port", "{port}"], {})
    assert settings.workers == 4
    assert settings.worker_command == ("node", "worker.js", "--port", "{port}")


def test_worker_command_from_environment_split_like_shell() -> None:
    settings = parse_settings([], {"WORKER_COMMAND": "sh -c 'exec worker --port {port}'"})
    assert settings.worker_command == ("sh", "-c", "exec worker --port {port}")


@pytest.mark.parametrize("variable", ["WORKERS", "LSIF_NUM_WORKERS", "NUM_WORKERS"])
def test_worker_count_variables(variable: str) -> None:
    assert parse_settings([], {variable: "7"}).workers == 7


def test_worker_count_variable_order() -> None:
    settings = parse_settings([], {"LSIF_NUM_WORKERS": "2", "NUM_WORKERS": "3", "WORKERS": "5"})
    assert settings.workers == 5


def test_flag_wins_over_variable() -> None:
    settings = parse_settings(["--workers", "2", "--base-port", "4000"],
                              {"WORKERS": "9", "LSIF_AGG_BASE_PORT": "5000"})
    assert settings.workers == 2
    assert settings.base_port == 4000


def test_zero_workers_allowed() -> None:
    assert parse_settings(["--workers", "0"], {}).workers == 0


def test_server_from_environment() -> None:
    settings = parse_settings([], {"SERVER_COMMAND": "server --port {port}",
                                   "LSIF_NUM_SERVERS": "1"})
    assert settings.server_command == ("server", "--port", "{port}")


def test_server_disabled_by_zero_servers() -> None:
    settings = parse_settings([], {"SERVER_COMMAND": "server", "LSIF_NUM_SERVERS": "0"})
    assert settings.server_command is None


def test_listen_ipv6_address() -> None:
    settings = parse_settings(["--listen", "[::1]:9100"], {})
    assert (settings.listen_host, settings.listen_port) == ("::1", 9100)


INVALID_INPUTS = [
    pytest.param(["--workers", "-1"], {}, "-1", id="negative-workers"),
    pytest.param(["--workers", "many"], {}, "'many'", id="non-numeric-workers"),
    pytest.param([], {"LSIF_NUM_WORKERS": "2.5"}, "'2.5'", id="fractional-workers-variable"),
    pytest.param([], {"LSIF_NUM_SERVERS": "2", "SERVER_COMMAND": "server"}, "2",
                 id="two-servers"),
    pytest.param([], {"LSIF_NUM_SERVERS": "1"}, "LSIF_NUM_SERVERS", id="server-without-command"),
    pytest.param(["--base-port", "70000"], {}, "70000", id="port-out-of-range"),
    pytest.param(["--base-port", "0"], {}, "0", id="port-zero"),
    pytest.param(["--workers", "10", "--base-port", "65530"], {}, "65539",
                 id="worker-ports-past-range"),
    pytest.param(["--workers", "4", "--listen", "127.0.0.1:3189"], {}, "3189",
                 id="listen-overlaps-workers"),
    pytest.param(["--workers", "4", "--server-command", "server", "--server-port", "3188"], {},
                 "3188", id="server-overlaps-workers"),
    pytest.param(["--listen", "localhost"], {}, "'localhost'", id="listen-without-port"),
    pytest.param(["--"], {}, "empty worker command", id="empty-command-after-dashes"),
    pytest.param([], {"WORKER_COMMAND": "   "}, "WORKER_COMMAND", id="blank-worker-command"),
    pytest.param([], {"SERVER_COMMAND": "'unclosed"}, "'unclosed", id="unbalanced-quotes"),
    pytest.param(["--grace-period", "soon"], {}, "'soon'", id="non-numeric-duration"),
    pytest.param(["--scrape-timeout", "0"], {}, "'0'", id="zero-timeout"),
    pytest.param(["--on-exit", "explode"], {}, "'explode'", id="unknown-on-exit"),
    pytest.param(["--log-format", "xml"], {}, "'xml'", id="unknown-log-format"),
    pytest.param(["--no-such-flag"], {}, "--no-such-flag", id="unknown-flag"),
    pytest.param(["--backoff-initial", "5", "--backoff-max", "1"], {}, "5 s",
                 id="backoff-initial-above-max"),
]


@pytest.mark.parametrize(("argv", "environ", "named_value"), INVALID_INPUTS)
def test_invalid_input_names_value(argv: list[str], environ: dict[str, str],
                                   named_value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, environ)
    assert named_value in str(caught.value)


@pytest.mark.parametrize(("argv", "environ", "named_value"), INVALID_INPUTS)
def test_invalid_input_exits_2(argv: list[str], environ: dict[str, str],
                               named_value: str) -> None:
    clean_env = {"PATH": "/usr/bin:/bin", **environ}
    result = subprocess.run([sys.executable, "-m", "lsif_agg", *argv], env=clean_env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert named_value in result.stderr
    assert result.stderr.count("\n") == 1, "expected one message line"
    assert result.stdout == ""


def test_help_documents_every_flag_with_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "lsif_agg", "--help"], capture_output=True,
                            text=True, timeout=30, check=True)
    help_text = " ".join(result.stdout.split())
    for flag, variable in [
        ("--workers", "WORKERS"), ("--server-command", "SERVER_COMMAND"),
        ("--servers", "LSIF_NUM_SERVERS"), ("--base-port", "LSIF_AGG_BASE_PORT"),
        ("--server-port", "LSIF_AGG_SERVER_PORT"), ("--listen", "LSIF_AGG_LISTEN"),
        ("--scrape-timeout", "LSIF_AGG_SCRAPE_TIMEOUT"),
        ("--grace-period", "LSIF_AGG_GRACE_PERIOD"), ("--on-exit", "LSIF_AGG_ON_EXIT"),
        ("--backoff-initial", "LSIF_AGG_BACKOFF_INITIAL"),
        ("--backoff-max", "LSIF_AGG_BACKOFF_MAX"),
        ("--max-early-exits", "LSIF_AGG_MAX_EARLY_EXITS"),
        ("--early-exit-seconds", "LSIF_AGG_EARLY_EXIT_SECONDS"),
        ("--log-format", "LSIF_AGG_LOG_FORMAT"), ("--log-level", "LSIF_AGG_LOG_LEVEL"),
    ]:
        assert flag in help_text
        assert variable in help_text
    assert "WORKER_COMMAND" in help_text
    assert "default" in help_text


def test_version_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "lsif_agg", "--version"], capture_output=True,
                            text=True, timeout=30, check=True)
    assert result.stdout.strip() == f"lsif-agg {__version__}"
