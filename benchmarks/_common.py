"""Shared helpers of the benchmark scripts."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def data_root_or_exit() -> Path:
    """The real-data root, or exit 0 with a message when it is absent."""
    from features.metadata import default_data_root

    root = default_data_root()
    if not (root / "blis").is_dir():
        print(f"real data not found at {root}; set STEPML_DATA")
        raise SystemExit(0)
    return root
