"""Modules used only on some paths are not imported when lsif_agg starts."""

from __future__ import annotations

import subprocess
import sys

# Each is imported by the code path that needs it, which an idle lsif_agg never takes:
# selectors, JSON logs, and timestamps with exponents. prometheus_client serves the sample worker
# and the tests only.
LAZY_MODULES = ("promql_parser", "pythonjsonlogger", "decimal", "prometheus_client")


def test_start_up_leaves_lazy_modules() -> None:
    probe = ("import sys, lsif_agg.__main__; "
             f"print(','.join(name for name in {LAZY_MODULES!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_selector_imports_promql_parser() -> None:
    probe = ("import sys; from lsif_agg.federate.select import build_filter; "
             "build_filter(['up']); print('promql_parser' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "True"


def test_app_imported_with_pure_python_frozenlist() -> None:
    # The C++ extension maps libstdc++; the switch that avoids it must not reach the workers.
    probe = ("import os, sys; from lsif_agg.__main__ import import_app; import_app(); "
             "print('frozenlist._frozenlist' in sys.modules, 'FROZENLIST_NO_EXTENSIONS' in os.environ)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]
