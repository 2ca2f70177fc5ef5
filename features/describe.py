"""Data report: ``python -m features.describe [--data PATH] [--target ...] [--json]``.

Prints rows per experiment, target statistics, the sampling characterisation,
the leaky/timing columns found and excluded, and the feature catalogue.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np

from features import catalog
from features.cli import run
from features.dataset import Dataset, load_dataset
from features.io import json_safe
from features.targets import DEFAULT_MAX_GAP


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m features.describe", description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


class _DataAction(argparse.Action):
    """``--data`` may be repeated: one value stays as given; several become one string of absolute
    paths joined by :data:`os.pathsep` (what :func:`features.dataset.data_entries` splits), so every
    command, and ``run.json``, handles a single string."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import os

        if not str(values).strip():
            parser.error("--data: empty path")
        previous = getattr(namespace, self.dest, None)
        if previous is None:
            setattr(namespace, self.dest, values)
            return
        parts = previous.split(os.pathsep) if getattr(namespace, "_data_joined", False) else [previous]
        parts = [os.path.abspath(p) for p in parts + [values]]
        setattr(namespace, "_data_joined", True)
        setattr(namespace, self.dest, os.pathsep.join(dict.fromkeys(parts)))


def _colmap_arg(value: str) -> str:
    """A shipped map's name as given; a ``.toml`` file as an absolute path (``run.json`` keeps it usable
    from any folder)."""
    from pathlib import Path

    path = Path(value)
    return str(path.resolve()) if path.suffix == ".toml" and path.is_file() else value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options shared by every CLI (``--data``, ``--target``, ``--colmap``, ...)."""
    parser.add_argument("--data", default=None, action=_DataAction,
                        help="traces folder, OTLP .json[.gz], step table (.parquet/.csv/.tsv), mapped table, a "
                             "folder or glob of tables; repeat for several; default: the bundled synthetic demo data")
    parser.add_argument("--target", default=None,
                        help="cycle (default for steps), duration, or any numeric column (mapped or raw)")
    parser.add_argument("--colmap", default=None, type=_colmap_arg,
                        help="column map for other tables: a shipped name or a .toml path")
    parser.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP,
                        help=f"largest step-id gap for the cycle target (default {DEFAULT_MAX_GAP})")
    parser.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed JSON lines")
    parser.add_argument("--experiments", default=None, help="comma-separated experiment ids to keep (default: all)")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    """Load the dataset named by the shared data options."""
    return load_dataset(args.data, args.target, max_gap=args.max_gap, colmap=args.colmap,
                        skip_bad_lines=args.skip_bad_lines, experiments=experiments_arg(args))


def experiments_arg(args: argparse.Namespace) -> list[str] | None:
    """The ``--experiments`` list, or None."""
    value = getattr(args, "experiments", None)
    return [e.strip() for e in value.split(",") if e.strip()] if value else None


def report(dataset: Dataset) -> dict[str, Any]:
    """The report as a JSON-ready dict."""
    frame, y = dataset.frame, dataset.y
    experiments = {}
    for exp_id, idx in frame.groupby("experiment_id", sort=True).indices.items():
        values = y[idx]
        experiments[str(exp_id)] = {
            "rows": int(len(idx)), "share": float(len(idx) / len(frame)),
            "target_median": float(np.median(values)), "target_mean": float(np.mean(values)),
            "target_p10": float(np.percentile(values, 10)), "target_p90": float(np.percentile(values, 90)),
            "sampling": dataset.sampling.get(str(exp_id), {}),
        }
    available = set(dataset.feature_names(("simulator", "trace", "leaky")))
    features = [{"name": f.name, "unit": f.unit, "availability": f.availability, "library": f.library,
                 "description": f.description, "available": f.name in available}
                for f in catalog.registry().values()]
    return json_safe({
        "source": dataset.source, "synthetic": dataset.synthetic, "kind": dataset.kind,
        "rows": int(len(frame)), "rows_without_target": dataset.dropped, "target": dataset.target,
        "target_median": float(np.median(y)), "target_mean": float(np.mean(y)),
        "experiments": experiments, "features": features, "excluded": list(dataset.excluded),
        "group_columns": list(dataset.group_columns),
    })


def format_report(rep: dict[str, Any]) -> str:
    """Human-readable text of :func:`report`."""
    lines = [f"data: {rep['source']}" + ("  [SYNTHETIC demo data]" if rep["synthetic"] else ""),
             f"rows: {rep['rows']} with a valid target ({rep['rows_without_target']} without)   "
             f"target: {rep['target']} (µs)", ""]
    lines.append(f"{'experiment':<48} {'rows':>6} {'share':>6} {'median':>10} {'mean':>10} "
                 f"{'gap=1':>6} {'gap>10':>6} {'KS p':>7} {'lag1':>6}")
    for exp_id, e in rep["experiments"].items():
        s = e.get("sampling") or {}
        fmt = lambda v, f: (f.format(v) if v is not None and v == v else "-")  # noqa: E731
        lines.append(f"{exp_id:<48} {e['rows']:>6} {e['share']:>6.1%} {e['target_median']:>10.1f} "
                     f"{e['target_mean']:>10.1f} {fmt(s.get('gap_share_1'), '{:.0%}'):>6} "
                     f"{fmt(s.get('gap_share_over_10'), '{:.0%}'):>6} {fmt(s.get('ks_uniform_p'), '{:.3f}'):>7} "
                     f"{fmt(s.get('lag1_autocorr_exact_cycle'), '{:.2f}'):>6}")
    lines += ["", "excluded (leaky, timing or analysis columns): " + (", ".join(rep["excluded"]) or "none"), "",
              f"{'feature':<20} {'unit':<9} {'availability':<12} {'here':<5} description"]
    for f in rep["features"]:
        lines.append(f"{f['name']:<20} {f['unit']:<9} {f['availability']:<12} {'yes' if f['available'] else '-':<5} "
                     f"{f['description']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    rep = report(dataset_from_args(args))
    if args.json:
        print(json.dumps(rep, indent=None, sort_keys=False))
    else:
        print(format_report(rep))
    return 0


if __name__ == "__main__":
    run(main, prog="features.describe")
