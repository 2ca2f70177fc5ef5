"""Five-way comparison inside the real BLIS: measured, our replay, BLIS+ours, BLIS trained-physics, BLIS roofline.

For each experiment, the artifact trained on the same model is used (an artifact's
model is read from its ``experiments``; ``-hf`` suffixes ignored), else the first
artifact (a cross-model one). Runs :func:`evaluation.blis.compare_experiment`
(BLIS built once per artifact and once plain, cached; BLIS runs cached) and prints
per experiment the E2E/TTFT/ITL errors of the five sources, the agreement of our
replay and BLIS+ours, and the goals:

- BLIS+ours within 2 points of our replay's E2E and ITL error on every experiment;
- BLIS+ours more accurate than BLIS trained-physics on E2E on at least 9 of 12
  non-reasoning experiments (needs cross-model artifacts for 7B and Mixtral).

Default experiments: the six non-reasoning Llama-2-70B and CodeLlama-34B ones.
Prints numbers; no assertions.

``--calibrate`` gives both simulators the queueing and post-decode overheads the replay
fits on each artifact's training experiment (:func:`evaluation.blis.calibrated_overheads`).

Run: ``python benchmarks/blis_compare.py ARTIFACT [ARTIFACT ...] [--experiments ID ...] [--calibrate]
[--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from _common import data_root_or_exit

DEFAULT = ["20260217-202857-llama-2-70b-tp4-general", "20260217-203421-llama-2-70b-hf-tp4-codegen",
           "20260218-084319-llama-2-70b-tp4-roleplay", "20260218-150304-codellama-34b-tp2-general",
           "20260218-150956-codellama-34b-tp2-codegen", "20260218-155500-codellama-34b-tp2-roleplay"]


def _model(exp_id: str) -> str:
    from features.metadata import parse_experiment_name

    parsed = parse_experiment_name(exp_id)
    return re.sub(r"-hf$", "", parsed.model) if parsed else exp_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", help="artifact.json files or export folders")
    parser.add_argument("--experiments", nargs="+", default=DEFAULT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--calibrate", action="store_true",
                        help="give both simulators the queueing and post-decode overheads the replay fits on each "
                             "artifact's first training experiment (70B general for an artifact without one)")
    args = parser.parse_args()
    root = data_root_or_exit()
    from discovery.formula import artifact_overheads, load_artifact
    from evaluation.blis import blis_binaries, calibrated_overheads, compare_experiment, format_experiment, format_summary

    loaded = []
    for a in args.artifacts:
        path = Path(a) / "artifact.json" if Path(a).is_dir() else Path(a)
        doc, predictor = load_artifact(path)
        models = {_model(e) for e in doc.get("experiments") or []}
        overheads = artifact_overheads(doc, path)
        if args.calibrate:
            train = (doc.get("experiments") or DEFAULT[:1])[0]
            overheads = calibrated_overheads(root / "blis" / "experiments" / train, predictor, args.seed)
            print(f"{path}: {overheads.source}: QueueingTime {overheads.queueing_us:.0f} µs, "
                  f"PostDecodeFixedOverhead {overheads.post_decode_us:.0f} µs", flush=True)
        loaded.append((path, predictor, overheads, models))
    results, binaries = {}, {}
    for exp_id in args.experiments:
        path, predictor, overheads, _ = next((x for x in loaded if _model(exp_id) in x[3]), loaded[0])
        if path not in binaries:
            binaries[path] = blis_binaries(path, None, ["stepml", "trained-physics", "roofline"], print, overheads)
        t0 = time.perf_counter()
        entry = compare_experiment(root / "blis" / "experiments" / exp_id, predictor, overheads, binaries[path],
                                   args.seed, print)
        entry["artifact"] = str(path)
        results[exp_id] = entry
        print(format_experiment(exp_id, entry) + f"\n  artifact {path} ({time.perf_counter() - t0:.0f} s)\n",
              flush=True)
    print(format_summary(results))
    within = [e for e in results.values() if e["agreement"]["e2e_pts"] <= 2 and e["agreement"]["itl_pts"] <= 2]
    better = [e for e in results.values() if e["blis_stepml"]["e2e_err"] is not None
              and abs(e["blis_stepml"]["e2e_err"]) < abs(e["blis_trained_physics"]["e2e_err"])]
    print(f"\nBLIS+ours within 2 points of the replay (E2E and ITL): {len(within)} of {len(results)} (goal: all)")
    print(f"BLIS+ours more accurate than trained-physics on E2E: {len(better)} of {len(results)} "
          "(goal: >= 9 of the 12 non-reasoning experiments)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
