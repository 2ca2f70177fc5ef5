"""Time to load all shared BLIS step data with every feature (goal < 10 s)."""
from __future__ import annotations

import time

from _common import data_root_or_exit

from features.dataset import load_dataset


def main() -> None:
    root = data_root_or_exit()
    for label, path in (("parquet step table", root / "blis/steps/enriched_steps.parquet"),
                        ("OTLP step traces (3 files)", root / "blis/otel_step_traces")):
        start = time.perf_counter()
        dataset = load_dataset(path)
        features = dataset.features(dataset.feature_names())
        elapsed = time.perf_counter() - start
        print(f"{label:<28} {len(dataset.frame):>6} rows with target, {len(features):>2} features: "
              f"{elapsed:6.2f} s   (goal < 10 s: ratio {elapsed / 10:.2f})")


if __name__ == "__main__":
    main()
