"""Import an existing PySR result into a run directory of this project.

``python -m discovery.search --import-pysr PATH --space S [--data D] [--split ...]``
reads PySR's hall of fame and rescores it exactly as a search's candidates
(same ``rescore`` and run-directory code), so a PySR run made elsewhere can
be reviewed, exported and audited here.

``PATH`` is a PySR run directory (``outputs/<run_id>/``) or a CSV file. In a
directory, ``hall_of_fame.csv.bak`` is preferred when it exists (PySR
rewrites ``hall_of_fame.csv`` while it runs and keeps the ``.bak`` as the
last complete copy), else ``hall_of_fame.csv``. The table needs the columns
``Complexity, Loss, Equation``; each equation is parsed with the shared
:func:`~search_spaces.operators.parse_formula`, so it may name variables
by feature name (``prefill_tokens``), by safe symbol name
(``batch__prefill_tokens``) or as ``x0 … xN`` — the index into the
problem's features in their order (the space's features the data can
compute, the order :func:`~discovery.engines.pysr_engine.pysr_kwargs` gives
PySR), and use the table's operators in PySR's spelling (``sqrt_abs``,
``square``, ``max``, ``^`` …).

Each equation becomes a candidate of engine ``pysr``, provenance
``pysr import <path>``; its loss is recomputed as the training mean
relative error on the split (with the probe penalty, as DEAP's) and its
complexity from the operator table (PySR's own ``Loss`` and
``Complexity`` may use other definitions). An equation that does not parse
stops the import with a one-line error naming the file and row.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from features.errors import StepMLError

if TYPE_CHECKING:
    import pandas as pd

    from discovery.candidate import Candidate, Problem
    from features.dataset import Dataset
    from search_spaces.spaces import SearchSpace

__all__ = ["PySRTable", "hall_of_fame_path", "problem_features", "read_pysr_table"]

REQUIRED = ("Complexity", "Loss", "Equation")


def hall_of_fame_path(path: str | Path) -> Path:
    """The CSV to read for ``path`` (a run directory or a CSV file); see the module docstring."""
    p = Path(path)
    if p.is_dir():
        for name in ("hall_of_fame.csv.bak", "hall_of_fame.csv"):
            if (p / name).is_file():
                return p / name
        raise StepMLError(f"{p}: no hall_of_fame.csv or hall_of_fame.csv.bak (not a PySR run directory?)")
    if p.is_file():
        return p
    raise StepMLError(f"{p}: no such PySR run directory or hall-of-fame file")


def problem_features(dataset: "Dataset", space: "SearchSpace") -> tuple[str, ...]:
    """The features a problem of ``space`` on ``dataset`` has, in order (as :func:`build_problem` picks them)."""
    available = set(dataset.feature_names(("simulator",)))
    return tuple(f for f in space.features if f in available)


class PySRTable:
    """A PySR hall of fame read and parsed (see :func:`read_pysr_table`)."""

    def __init__(self, source: Path, frame: "pd.DataFrame", features: Sequence[str]) -> None:
        from discovery.candidate import tidy
        from search_spaces.operators import parse_formula

        self.source = source
        self.frame = frame
        self.features = tuple(features)
        self.exprs = []
        for i, row in frame.reset_index(drop=True).iterrows():
            text = row["Equation"]
            if not text.strip():
                raise StepMLError(f"{source}: row {i + 1}: empty equation")
            try:
                self.exprs.append(tidy(parse_formula(text, self.features)))
            except StepMLError as exc:
                raise StepMLError(f"{source}: row {i + 1} (Complexity {row['Complexity']}): {exc}") from None

    def candidates(self, problem: "Problem", provenance: str | None = None) -> list["Candidate"]:
        """The equations as candidates of engine ``pysr`` on ``problem`` (every row kept)."""
        from discovery.candidate import formula_candidates

        if tuple(problem.features) != self.features:
            raise StepMLError("the problem's features differ from those the PySR equations were parsed with")
        return formula_candidates(self.exprs, problem, "pysr", provenance or f"pysr import {self.source}")

    def stats(self) -> dict[str, object]:
        """What the import did, for ``run.json``."""
        return {"imported_from": str(self.source), "equations": len(self.exprs)}


def read_pysr_table(path: str | Path, features: Sequence[str]) -> PySRTable:
    """Read and parse a PySR hall of fame (one-line :class:`StepMLError` on any problem)."""
    import pandas as pd

    source = hall_of_fame_path(path)
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for broken CSVs
        raise StepMLError(f"{source}: cannot read as CSV ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise StepMLError(f"{source}: missing column(s) {', '.join(missing)} (a PySR hall of fame has "
                          f"{', '.join(REQUIRED)}; found {', '.join(map(str, frame.columns)) or 'none'})")
    if frame.empty:
        raise StepMLError(f"{source}: no equations")
    return PySRTable(source, frame, features)
