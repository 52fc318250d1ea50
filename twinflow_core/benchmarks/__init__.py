"""Benchmarks, each split as protocol/IO, perception and pure scoring (docs/benchmarks.md).

- `geneval_score`, `dpg_score`: pure scoring functions (detections or answers in, numbers out), identical
  for the official backends and the embedded shapes twins.
- `shapes_detector`, `evaluator_net` (the digits classifier and the shapes feature net): CPU perception backends
  for the embedded domains.
- `features`: evaluator features, Frechet distance and diversity.
- `official`: writers of the official file layouts, the runner of the official scorers, output parsers, and
  `run_official` (a Generator sampled on the official prompt sets and scored by them).
- `protocol`: what an evaluation is: its config, the sampling settings, the prompt sets and the real references.
- `evaluate`: generate -> perceive -> score for a Generator, returning a flat metrics dict.
- `uncertainty`: standard errors over prompts, and the paired ratios of a model's scores to the base's.
"""
