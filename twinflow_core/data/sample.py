"""`Sample`: one captioned image as every data source yields it (the unit `prepared.write_prepared` stores)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    image: np.ndarray          # uint8 (H, W, 3)
    caption: str
    kind: str                  # caption family: a GenEval tag or "dense" (shapes), "digit", "imagefolder"
    source: str                # where it came from: "shapes", "digits:<index>", "imagefolder:<file_name>"
    label: int = -1            # class label, -1 when the source has none
    scene: dict | None = None  # the shapes world's ground truth (see twinflow_core.data.shapes)
