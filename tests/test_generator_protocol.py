"""Every kind of generator the loader knows is a `twinflow_core.generator.Generator`: what evaluation, the pyfunc
model and `twinflow generate` use (image_size, vocabulary, generate) is there, with no stand-in objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinflow_core.benchmarks.protocol import EvalConfig, domain_of
from twinflow_core.data import shapes
from twinflow_core.generator import Generator
from twinflow_core.loader import FORMATS, LATENT_FORMAT, NET_FORMAT, generator_format, load_generator
from twinflow_core.nets import build_net
from twinflow_core.nets.generator import save_generator
from twinflow_core.text import Tokenizer


def _net_folder(path):
    torch.manual_seed(0)
    tok = Tokenizer(shapes.vocabulary(), max_len=24)
    kwargs = dict(
        image_size=32,
        channels=[8, 8],
        res_blocks=1,
        attn_levels=[],
        patch=4,
        vocab_size=tok.size,
        max_len=24,
        text_dim=16,
        text_layers=1,
        heads=2,
        time_dim=16,
    )
    return save_generator(path, build_net("unet", **kwargs), "unet", kwargs, tok)


def _latent_folder(path):
    pytest.importorskip("diffusers")
    from twinflow_core.adapters.generator_files import wrap_base
    from twinflow_core.adapters.tiny import save_tiny_sd3_pipeline

    return wrap_base(save_tiny_sd3_pipeline(path, shapes.vocabulary()), "sd3", 32, 48)


FOLDERS = {NET_FORMAT: _net_folder, LATENT_FORMAT: _latent_folder}


def test_every_format_of_the_loader_has_a_kind_tested_here():
    assert set(FOLDERS) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FOLDERS))
def test_each_loaded_kind_is_a_generator(fmt, tmp_path):
    folder = FOLDERS[fmt](tmp_path / "gen")
    assert generator_format(folder) == fmt
    gen = load_generator(folder)
    assert isinstance(gen, Generator)
    # the evaluator tells the benchmark domain from the generator's own words
    assert {"circle", "square", "triangle", "cross", "red"} <= set(gen.vocabulary)
    assert domain_of(gen, EvalConfig()) == "shapes"
    images = gen.generate(["a photo of a red circle"], nfe=1, seed=0)
    assert images.shape == (1, gen.image_size, gen.image_size, 3) and images.dtype == np.uint8


def test_an_object_without_the_protocol_is_not_a_generator():
    class Images:  # draws, but cannot say what it knows or how big it draws
        def generate(self, captions, nfe=1, seed=0, style="few", cfg_scale=0.0):
            return np.zeros((len(captions), 8, 8, 3), np.uint8)

    assert not isinstance(Images(), Generator)
