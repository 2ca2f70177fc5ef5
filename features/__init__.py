"""Feature libraries and data loading for StepML Discovery.

This package is the foundation every other part builds on: it reads step
traces (OTLP JSON, parquet/CSV step tables, any table through a TOML column
map), derives the step-time targets, declares the feature libraries and the
splits, and generates the bundled synthetic demo dataset.

Nothing is computed at import time; import the sub-modules you need.
"""
