"""Go ``StepTime`` at batch 128, features included, inside the real BLIS package (goal < 2 µs).

Builds BLIS with the overlay of an export (``python -m discovery.export ... --blis``
is run into a temporary folder for an artifact) and, in the build tree, runs the
overlay's ``BenchmarkStepMLStepTime128`` (one prefill chunk of 64 tokens and 127
decodes: aggregates, architecture columns, features and formula on every call)
``--count`` times; prints ns/op of each run, the median, and the goal. Timing on a
shared machine is noisy: compare medians. Prints numbers; no assertions.

Run: ``python benchmarks/blis_go_bench.py ARTIFACT_OR_EXPORT_DIR [--count N] [--benchtime 20000x]``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the project on sys.path)

GOAL_NS = 2000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact.json or an export folder")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--benchtime", default="20000x")
    args = parser.parse_args()
    from discovery.blis_export import export_artifact_to_blis
    from evaluation.blis_build import BlisUnavailable, build_blis

    artifact = Path(args.artifact)
    artifact = artifact / "artifact.json" if artifact.is_dir() else artifact
    bench = ("-run", "^$", "-bench", "^BenchmarkStepMLStepTime128$", "-benchtime", args.benchtime,
             "-count", str(args.count))
    with tempfile.TemporaryDirectory(prefix="stepml-bench-") as tmp:
        overlay = export_artifact_to_blis(artifact, Path(tmp) / "overlay", echo=lambda *_: None)
        try:
            build = build_blis(overlay, go_test_args=bench, use_cache=False)
        except BlisUnavailable as exc:
            print(f"BLIS cannot be built here: {exc}")
            return
    log = build.go_test_log.read_text()
    ns = [float(m) for m in re.findall(r"BenchmarkStepMLStepTime128\S*\s+\d+\s+([0-9.]+) ns/op", log)]
    if not ns:
        print(f"no benchmark result; go test output:\n{log}")
        return
    median = statistics.median(ns)
    print(f"artifact: {artifact}")
    print("StepTime at batch 128 (ns/op): " + ", ".join(f"{v:.0f}" for v in ns))
    print(f"median {median:.0f} ns = {median / 1000:.2f} µs; goal < {GOAL_NS / 1000:.0f} µs: "
          f"{'met' if median < GOAL_NS else 'NOT met'} (ratio {median / GOAL_NS:.2f})")


if __name__ == "__main__":
    main()
