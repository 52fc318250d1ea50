"""The names earlier code imports from `twinflow_core.checkpoint` (exported pipelines' tests, user scripts:
`from twinflow_core.checkpoint import load_generator`), each from its home:

- twinflow_core/generator.py: sample_images, pixel units (to_data, to_pixels); its Generator protocol is not
  re-exported: `checkpoint.Generator` was the in-house class, now nets/generator.py's NetGenerator;
- twinflow_core/loader.py: the format table, load_generator, fetch_generator;
- twinflow_core/nets/generator.py: the in-house nets' folder format (save_generator, read_meta);
- twinflow_core/files.py: safe names, plain files, finite weights.
The project's own code imports each name from its home; this module sits above them all, so importing it
closes no circle.
"""

from __future__ import annotations

from twinflow_core.files import check_finite_weights, member_name, no_symlinks, non_finite_tensor, safe_join
from twinflow_core.generator import PIXEL_MEAN, PIXEL_SCALE, sample_images, to_data, to_pixels
from twinflow_core.loader import fetch_generator, is_latent, load_generator
from twinflow_core.nets.generator import FORMAT, META, WEIGHTS, NetGenerator, read_meta, save_generator

__all__ = [
    "FORMAT",
    "META",
    "PIXEL_MEAN",
    "PIXEL_SCALE",
    "WEIGHTS",
    "NetGenerator",
    "check_finite_weights",
    "fetch_generator",
    "is_latent",
    "load_generator",
    "member_name",
    "no_symlinks",
    "non_finite_tensor",
    "read_meta",
    "safe_join",
    "sample_images",
    "save_generator",
    "to_data",
    "to_pixels",
]
