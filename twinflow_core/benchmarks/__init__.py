"""Benchmarks, each split as protocol/IO, perception and pure scoring (see design/benchmarks.md).

- `geneval_score`, `dpg_score`: pure scoring functions (detections or answers in, numbers out), identical
  for the official backends and the embedded shapes twins.
- `shapes_detector`, `digits_classifier`: CPU perception backends for the embedded domains.
- `features`: evaluator features, Frechet distance and diversity.
- `official`: writers of the official file layouts, the runner of the official scorers, output parsers.
- `evaluate`: generate -> perceive -> score for a Generator, returning a flat metrics dict.
"""
