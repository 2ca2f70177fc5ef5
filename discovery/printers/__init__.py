"""Exporters of a chosen formula: Go (BLIS latency model), C99, and their parity checks.

* :mod:`discovery.printers.go` — :class:`GoCodePrinter`, :func:`go_code`,
  :func:`go_source` (a complete Go file over BLIS's ``sim.Request``);
* :mod:`discovery.printers.c` — :func:`c_source` (C99 via sympy's C99 printer);
* :mod:`discovery.printers.checks` — :func:`c_parity`, :func:`go_parity`,
  :func:`gofmt_check` and their :class:`CheckResult`.
"""
from __future__ import annotations

from discovery.printers.c import c_code, c_source
from discovery.printers.checks import CheckResult, c_parity, find_go, find_gofmt, go_parity, gofmt_check
from discovery.printers.go import (
    BLIS_MODULE,
    BLIS_SIM_PACKAGE,
    GoCodePrinter,
    go_code,
    go_identifier,
    go_source,
    gofmt_expr,
)

__all__ = [
    "BLIS_MODULE",
    "BLIS_SIM_PACKAGE",
    "CheckResult",
    "GoCodePrinter",
    "c_code",
    "c_parity",
    "c_source",
    "find_go",
    "find_gofmt",
    "go_code",
    "go_identifier",
    "go_parity",
    "go_source",
    "gofmt_check",
    "gofmt_expr",
]
