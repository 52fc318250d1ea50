"""One interface over the data sources: `open_source(cfg)` -> how many samples, the samples, and the
source-specific part of the prepared dataset's meta (vocabulary, classes, caption kinds, parameters)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from twinflow_core.data.config import DataConfig
from twinflow_core.data.sample import Sample
from twinflow_core.data.vocab import vocabulary_of
from twinflow_core.data import digits
from twinflow_core.data import shapes
from twinflow_core.data.imagefolder import imagefolder_samples
from twinflow_core.data.prompt_sets import load_holdout


@dataclass
class Source:
    n: int
    samples: Iterator[Sample]
    meta: dict


def open_source(cfg: DataConfig, root: str | Path = ".") -> Source:
    """The source `cfg.source`; a relative shapes.holdout_dir is taken from `root` (the repository)."""
    size = cfg.image_size
    if cfg.source == "shapes":

        sc = cfg.shapes
        holdout = None
        if sc.holdout_dir:

            holdout = load_holdout(Path(root) / sc.holdout_dir)
        kinds, _ = shapes.mix_table(sc.mix)
        meta = {
            "vocabulary": shapes.vocabulary(),
            "classes": list(shapes.CLASSES),   # object classes of the scenes; samples carry no label
            "labeled": False,
            "colors": list(shapes.COLORS),
            "relations": list(shapes.RELATIONS),
            "kinds": list(kinds),
            "holdout": None if holdout is None else {
                "prompts_dir": sc.holdout_dir, "n_prompts": len(holdout.prompts),
                "n_color_pairs": len(holdout.pairs)},
            "params": {"n_images": sc.n_images, "mix": sc.mix or shapes.DEFAULT_MIX},
        }
        return Source(sc.n_images, shapes.shapes_samples(sc.n_images, size, cfg.seed, holdout, sc.mix), meta)
    if cfg.source == "digits":

        meta = {"vocabulary": digits.vocabulary(), "classes": list(digits.CLASSES), "labeled": True,
                "kinds": ["digit"], "params": {}}
        return Source(digits.N_DIGITS, digits.digits_samples(size), meta)
    if cfg.source == "imagefolder":

        ic = cfg.imagefolder
        n, captions, samples = imagefolder_samples(ic.path, size, ic.strict, ic.min_size, ic.endpoint_url,
                                                   ic.storage_options)
        # The folder's location and credentials stay out of the dataset: the same files give the same bytes.
        params = {k: v for k, v in asdict(ic).items() if k in ("strict", "min_size")}
        meta = {"vocabulary": vocabulary_of(captions), "classes": None, "labeled": False,
                "kinds": ["imagefolder"], "params": params}
        return Source(n, samples, meta)
    raise AssertionError(cfg.source)  # DataConfig already rejected unknown sources
