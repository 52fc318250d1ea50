"""The image net's contract and the generator checkpoint: safetensors + JSON round trip, same images after reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twinflow_core.checkpoint import load_generator, save_generator, to_data, to_pixels
from twinflow_core.errors import DataError
from twinflow_core.nets import build_net
from twinflow_core.text import Tokenizer

WORDS = ["a", "photo", "of", "red", "blue", "circle", "square", "left", "right"]
TINY = dict(
    image_size=16, patch=1, channels=[16, 32], attn_levels=[1], text_dim=32, text_layers=1, heads=2, time_dim=32
)


def _net(tok, seed=0):
    torch.manual_seed(seed)
    net = build_net("unet", **TINY, vocab_size=tok.size, max_len=tok.max_len)
    with torch.no_grad():  # residual branches and the output start at zero; perturb so every input matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_tokenizer_null_caption_and_errors():
    tok = Tokenizer(WORDS, max_len=6)
    ids = tok.encode(["A photo of a red circle.", ""])
    assert ids.shape == (2, 6) and ids[1].sum() == 0 and torch.equal(ids[1], tok.null(1)[0])
    assert tok.decode(ids)[0] == "a photo of a red circle"
    with pytest.raises(DataError, match="'green' is not in the vocabulary"):
        tok.encode(["a green circle"])
    with pytest.raises(DataError, match="more than max_len=6"):
        tok.encode(["a photo of a red circle left"])
    assert (
        Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).encode(["red"]).tolist()
        == tok.encode(["red"]).tolist()
    )


def test_unet_contract_signed_time_gate_and_caption():
    tok = Tokenizer(WORDS, max_len=8)
    net = _net(tok).eval()
    x = torch.randn(4, 3, 16, 16)
    t = torch.full((4,), 0.5)
    cond = tok.encode(["a red circle"] * 4)
    with torch.no_grad():
        f = net(x, t, t, cond)
        assert f.shape == x.shape
        assert not torch.allclose(f, net(x, -t, -t, cond))  # the twin branch is another field
        assert not torch.allclose(f, net(x, t, torch.zeros(4), cond))  # r enters through the gate (t - r)
        assert not torch.allclose(f, net(x, t, t, tok.null(4)))  # the caption matters
        assert torch.allclose(net(x, t, t, None), net(x, t, t, tok.null(4)[:, :1]), atol=1e-6)


def test_out_skip_makes_the_one_step_generator_the_network_output():
    """out_skip: F = c(|t|) x_t + net, c(1) = 1 and c(0) = -1; with the output layer at its zero init, F is
    exactly the skip, so the 1-step sample z - F(z, 1, 0) is 0 whatever the noise (no noise to copy through)."""
    from twinflow_core.nets.unet import skip_scale
    from twinflow_core.objective import one_step

    tok = Tokenizer(WORDS, max_len=8)
    torch.manual_seed(0)
    net = build_net("unet", **TINY, vocab_size=tok.size, max_len=tok.max_len, out_skip=True, sigma_data=0.5).eval()
    z, cond = torch.randn(3, 3, 16, 16), tok.encode(["a red circle"] * 3)
    ones = torch.ones(3)
    assert torch.equal(one_step(net, z, cond), torch.zeros_like(z))
    with torch.no_grad():
        assert torch.equal(net(z, 0 * ones, 0 * ones, cond), -z)
        assert torch.equal(net(z, -ones, -ones, cond), z)  # the twin branch uses |t|
    # the least-squares coefficient, checked against a direct estimate on Gaussian data of scale 0.5
    g = torch.Generator().manual_seed(0)
    x, noise = 0.5 * torch.randn(200_000, generator=g), torch.randn(200_000, generator=g)
    for t in (0.25, 0.5, 0.9):
        xt, v = t * noise + (1 - t) * x, noise - x
        assert skip_scale(torch.tensor([t]), 0.5).item() == pytest.approx(
            ((xt * v).mean() / (xt * xt).mean()).item(), abs=0.02
        )
    plain = build_net("unet", **TINY, vocab_size=tok.size, max_len=tok.max_len)
    assert torch.equal(one_step(plain, z, cond), z)  # without the skip the net must learn to cancel z


def test_default_net_is_a_few_million_parameters_at_most():
    from twinflow_core.training.compose import compose

    sections, _ = compose([])
    net = build_net("unet", **sections.model.net_kwargs(), vocab_size=40, max_len=40)
    n = sum(p.numel() for p in net.parameters())
    assert 0.5e6 < n < 3e6


def test_generator_round_trip_gives_identical_images(tmp_path):
    tok = Tokenizer(WORDS, max_len=8)
    net = _net(tok)
    kwargs = {**TINY, "vocab_size": tok.size, "max_len": tok.max_len}
    save_generator(tmp_path / "g", net, "unet", kwargs, tok, {"stage": "test"})
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "g" / "model.json").read_text())
    assert meta["net"] == "unet" and meta["tokenizer"]["vocabulary"] == WORDS and meta["extra"]["stage"] == "test"
    assert not (tmp_path / "g" / "model.safetensors").read_bytes().startswith(b"\x80")  # not a pickle

    gen = load_generator(tmp_path / "g")
    captions = ["a red circle", "a blue square", ""]
    for style, nfe in (("few", 1), ("few", 2), ("euler", 3)):
        imgs = gen.generate(captions, nfe=nfe, seed=5, style=style)
        assert imgs.dtype == np.uint8 and imgs.shape == (3, 16, 16, 3)
        again = load_generator(tmp_path / "g").generate(captions, nfe=nfe, seed=5, style=style)
        assert np.array_equal(imgs, again)
    # reload reproduces the original net's outputs exactly
    from twinflow_core.sampler import sample

    z = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        direct = to_pixels(sample(net.eval(), z, tok.encode(captions), nfe=1))
    assert np.array_equal(direct, gen.generate(captions, nfe=1, seed=5))
    assert not np.array_equal(gen.generate(captions, seed=5), gen.generate(captions, seed=6))
    guided = gen.generate(captions, nfe=2, seed=5, style="euler", cfg_scale=0.5)
    assert guided.shape == (3, 16, 16, 3)
    with pytest.raises(DataError, match="not in the vocabulary"):
        gen.generate(["a green circle"])


def test_pixels_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    x = to_data(img)
    assert x.shape == (2, 3, 4, 4) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_pixels(x), img)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no model.json"):
        load_generator(tmp_path)
    tok = Tokenizer(WORDS, max_len=8)
    save_generator(tmp_path, _net(tok), "unet", {**TINY, "vocab_size": tok.size, "max_len": tok.max_len}, tok)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["net_kwargs"]["channels"] = [16, 48]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="weights do not fit"):
        load_generator(tmp_path)


def test_the_same_weights_give_the_same_file_bytes(tmp_path):
    """model.safetensors is a DVC output: equal weights must give equal bytes (safetensors itself orders the header
    metadata differently from one save to the next, twinflow_core/checkpoint._sort_metadata)."""
    tok = Tokenizer(WORDS, max_len=8)
    net = _net(tok)
    kwargs = {**TINY, "vocab_size": tok.size, "max_len": tok.max_len}
    files = []
    for i in range(8):
        save_generator(tmp_path / str(i), net, "unet", kwargs, tok, {"stage": "test"})
        files.append((tmp_path / str(i) / "model.safetensors").read_bytes())
    assert all(f == files[0] for f in files)
    assert b'"__metadata__":{"format":"twinflow-generator/1","net":"unet"}' in files[0]
    gen = load_generator(tmp_path / "0")  # still a safetensors file the loader reads
    assert torch.equal(next(iter(gen.net.state_dict().values())), next(iter(net.state_dict().values())))
