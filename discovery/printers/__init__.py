"""Exporters of a chosen formula: Python, C99, Go (a BLIS latency model) and their checks.

* :mod:`discovery.printers.semantics` — the operator table's protected division
  and ``log1p``, printed the same way in every language;
* :mod:`discovery.printers.python` — sympy's Python/NumPy printers with those semantics;
* :mod:`discovery.printers.c` — :func:`c_source` (C99 via sympy's C99 printer);
* :mod:`discovery.printers.go` — :class:`GoCodePrinter`, :func:`go_code`, :func:`go_identifier`;
* :mod:`discovery.printers.gofmt` — :func:`gofmt_expr` (gofmt's expression layout);
* :mod:`discovery.printers.go_source` — :func:`go_source` (BLIS's ``StepMLModel``);
* :mod:`discovery.printers.blis_columns` — architecture/hardware columns from
  BLIS's ``sim.ModelHardwareConfig``;
* :mod:`discovery.printers.go_tests` — the Go test file (invariants, test vectors);
* :mod:`discovery.printers.blis` — the overlay folder BLIS is built with;
* :mod:`discovery.printers.checks` — :func:`c_parity`, :func:`go_parity`,
  :func:`gofmt_check` and their :class:`CheckResult`.
"""
from __future__ import annotations

from discovery.printers.c import c_code, c_source
from discovery.printers.checks import CheckResult, c_parity, find_go, find_gofmt, go_parity, gofmt_check
from discovery.printers.go import BLIS_MODULE, BLIS_SIM_PACKAGE, GoCodePrinter, go_code, go_identifier
from discovery.printers.go_source import Overheads, go_source
from discovery.printers.gofmt import gofmt_expr

__all__ = [
    "BLIS_MODULE",
    "BLIS_SIM_PACKAGE",
    "CheckResult",
    "GoCodePrinter",
    "Overheads",
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
