"""The shared evaluation harness: metrics, scorer, baselines, continuous-batching replay."""
