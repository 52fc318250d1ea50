"""Benchmarks, each split as protocol/IO, perception and pure scoring (docs/benchmarks.md).

- `geneval_score`, `dpg_score`: pure scoring functions (detections or answers in, numbers out), identical
  for the official backends and the embedded shapes twins.
- `shapes_detector`, `evaluator_net` (the digits classifier and the shapes feature net): CPU perception backends
  for the embedded domains.
- `features`: evaluator features, Frechet distance and diversity.
- `official`: writers of the official file layouts, the runner of the official scorers, output parsers.
- `evaluate`: generate -> perceive -> score for a Generator, returning a flat metrics dict.
"""
