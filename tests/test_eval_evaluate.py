"""The evaluate logic and stage: a generator that returns real renders reaches the ceiling, one that returns a
blurry mean or noise does not, a tiny random UNet runs end to end through `python -m flows.stages.evaluate`."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinflow_core.benchmarks import evaluate as ev
from twinflow_core.benchmarks import protocol
from twinflow_core.data import digits, prompt_sets, shapes
from twinflow_core.errors import ConfigError
from twinflow_core.text import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = str(ROOT / "data" / "prompts")
EVALUATORS = str(ROOT / "artifacts" / "evaluators")


class RenderGenerator:
    """Generator stand-in: for each caption, a real render of its prompt; with mean > 1, the mean collapse of a
    flow-matching model at 1 NFE instead: the pixel average of `mean` renders of the prompt (the same for
    every sample of that prompt) plus a little sample-dependent noise."""

    def __init__(self, mean: int = 1):
        self.tokenizer = Tokenizer(shapes.vocabulary())
        self.image_size = 32
        self.mean = mean
        self.by_prompt = {r["prompt"]: ("g", r) for r in prompt_sets.load_geneval_metadata(PROMPTS)}
        self.by_prompt.update({it["text"]: ("d", it) for it in prompt_sets.load_dpg_items(PROMPTS)})

    def generate(self, captions, nfe=1, seed=0, style="few", cfg_scale=0.0):
        out = []
        rng = np.random.default_rng(seed)
        for i, c in enumerate(captions):
            kind, spec = self.by_prompt[c]
            render = shapes.render_geneval if kind == "g" else shapes.render_dpg
            if self.mean == 1:
                out.append(render(spec, seed * 7919 + i, 32)[0])
                continue
            mean = np.mean([render(spec, j, 32)[0] for j in range(self.mean)], axis=0)
            out.append(np.clip(np.rint(mean + rng.normal(0, 3, mean.shape)), 0, 255).astype(np.uint8))
        return np.stack(out)


CFG = dict(
    prompts_dir=PROMPTS,
    evaluators_dir=EVALUATORS,
    geneval_max_prompts=18,
    dpg_max_items=5,
    images_per_prompt=2,
    nfe=[1],
    base_nfe=[1],
    base_steps=0,
    grid_prompts=4,
)


@pytest.fixture(scope="module")
def evaluation():
    return ev.Evaluation(protocol.EvalConfig.from_dict(CFG), "shapes", 32, progress=lambda s: None)


def test_real_renders_reach_the_ceiling_and_the_mean_collapses(evaluation):
    setting = [protocol.Setting("1nfe", 1, "few")]
    real = evaluation.run(RenderGenerator(), setting).metrics
    mean = evaluation.run(RenderGenerator(mean=12), setting).metrics
    floor = evaluation.real_metrics()
    assert real["geneval-shapes/overall@1nfe"] >= 0.9
    assert real["dpg-shapes/score_corrected@1nfe"] >= 90
    assert mean["geneval-shapes/overall@1nfe"] <= 0.2
    assert mean["dpg-shapes/score_corrected@1nfe"] <= 30
    # the conditional mean: far from the data, and every sample of a prompt alike
    assert mean["features-shapes/fd@1nfe"] > 5 * real["features-shapes/fd@1nfe"]
    assert mean["features-shapes/diversity@1nfe"] < 0.5 * real["features-shapes/diversity@1nfe"]
    assert real["features-shapes/fd@1nfe"] < 3 * floor["features-shapes/fd@real"] + 1
    assert real["throughput/images_per_s@1nfe"] > 0
    tags = {k.split("/")[1].split("@")[0] for k in real if k.startswith("geneval-shapes/")}
    assert {"single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"} <= tags


def test_settings_and_names():
    cfg = protocol.EvalConfig.from_dict({"nfe": [1, 2, 4], "base_nfe": [1], "base_steps": 50, "base_cfg": [0.0, 3.0]})
    assert [s.label for s in protocol.settings_for(cfg, base=False)] == ["1nfe", "2nfe", "4nfe"]
    base = protocol.settings_for(cfg, base=True)
    assert [s.label for s in base] == ["1nfe", "euler50", "euler50-cfg3"]
    assert [s.evaluations for s in base] == [1, 50, 100]
    with pytest.raises(ConfigError, match="unknown key"):
        protocol.EvalConfig.from_dict({"nfes": [1]})
    with pytest.raises(ConfigError, match="nfe"):
        protocol.EvalConfig.from_dict({"nfe": [0]})


def _tiny_checkpoint(path, vocabulary, seed):
    import torch

    from twinflow_core.checkpoint import save_generator
    from twinflow_core.nets import build_net

    torch.manual_seed(seed)
    tok = Tokenizer(vocabulary, max_len=24)
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
    save_generator(path, build_net("unet", **kwargs), "unet", kwargs, tok, {"stage": "test"})
    return path


def test_stage_end_to_end_with_tiny_random_nets(tmp_path):
    from flows.stages.evaluate import main

    ck = _tiny_checkpoint(tmp_path / "twinflow", shapes.vocabulary(), 0)
    base = _tiny_checkpoint(tmp_path / "base", shapes.vocabulary(), 1)
    params = {
        "evaluate": {
            **CFG,
            "geneval_max_prompts": 6,
            "dpg_max_items": 2,
            "nfe": [1, 2],
            "base_steps": 2,
            "base_cfg": [0.0, 2.0],
            "reference_max_prompts": 3,
            "ratio_reference": "euler2-cfg2",
            "base_cache": str(tmp_path / "cache"),
            "checkpoint": str(ck),
            "base": str(base),
            "metrics": str(tmp_path / "m/eval.json"),
            "breakdown": str(tmp_path / "m/breakdown.json"),
            "plots_dir": str(tmp_path / "m/plots"),
            "reports_dir": str(tmp_path / "r"),
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 0
    m = json.loads((tmp_path / "m/eval.json").read_text())
    for key in (
        "geneval-shapes/overall@1nfe",
        "geneval-shapes/overall@2nfe",
        "dpg-shapes/score@1nfe",
        "base/geneval-shapes-refset/overall@euler2",
        "base/geneval-shapes-refset/overall@euler2-cfg2",
        "base/dpg-shapes/score_corrected@1nfe",
        "features-shapes/fd@1nfe",
        "features-shapes/fd@real",
    ):
        assert key in m, key
    # the wall-clock figures live beside eval.json, never in it (a rerun of the same inputs leaves it bitwise)
    timing = json.loads((tmp_path / "m/eval.timing.json").read_text())
    assert set(timing) >= {
        "throughput/images_per_s@2nfe",
        "base/throughput/images_per_s@euler2-cfg2",
        "evaluate/seconds",
    }
    assert not [k for k in m if "throughput" in k or "seconds" in k]
    from flows.tracking import read_scores

    assert (
        read_scores(tmp_path / "m/eval.json")["throughput/images_per_s@2nfe"] == timing["throughput/images_per_s@2nfe"]
    )
    assert m["geneval-shapes/overall@1nfe"] <= 0.2  # an untrained net draws nothing the detector believes
    rows = list(csv.DictReader((tmp_path / "m/plots/by_setting.csv").open()))
    assert [(r["model"], r["setting"]) for r in rows] == [("twinflow", "1nfe"), ("twinflow", "2nfe"), ("base", "1nfe")]
    ref = list(csv.DictReader((tmp_path / "m/plots/by_setting_refset.csv").open()))
    assert [(r["model"], r["setting"]) for r in ref] == [
        ("twinflow", "1nfe"),
        ("twinflow", "2nfe"),
        ("base", "1nfe"),
        ("base", "euler2"),
        ("base", "euler2-cfg2"),
    ]
    assert ref[-1]["nfe"] == "4"
    # the reference ran on 3 geneval prompts + 2 dpg items (x2 images); 1 NFE is also scored on exactly those
    for key in (
        "geneval-shapes-refset/overall@1nfe",
        "base/geneval-shapes-refset/overall@1nfe",
        "base/geneval-shapes-refset/overall@euler2",
        "features-shapes-refset/fd@real",
    ):
        assert key in m, key
    assert "base/geneval-shapes/overall@euler2" not in m
    # every score has its standard error; the ratios pair the refset scores with the reference's
    for key in (
        "geneval-shapes/overall_se@1nfe",
        "dpg-shapes/score_se@1nfe",
        "base/geneval-shapes-refset/overall_se@euler2",
    ):
        assert key in m, key
    for bench, metric in (("geneval-shapes", "overall"), ("dpg-shapes", "score")):
        ratio = f"ratio/{bench}-refset/{metric}@1nfe"  # untrained nets: a reference of 0 gives no ratio
        assert (ratio in m and f"ratio/{bench}-refset/{metric}_se@1nfe" in m) == (
            m[f"base/{bench}-refset/{metric}@euler2-cfg2"] > 0
        )
    assert "ratio/geneval-shapes/overall@1nfe" not in m  # the full set is not paired with a subset's reference
    # a second run with the same base reads the base's part back: the same numbers, bit for bit
    # and, the timings being elsewhere, every DVC-tracked output of the stage is bitwise the same as the first run's
    tracked = [
        "m/eval.json",
        "m/breakdown.json",
        "m/plots/by_setting.csv",
        "m/plots/by_setting_refset.csv",
        "m/plots/geneval_tags.csv",
        "r/samples_1nfe.png",
        "r/samples_base/euler2-cfg2.png",
    ]
    first = {name: (tmp_path / name).read_bytes() for name in tracked}
    (tmp_path / "m/eval.json").rename(tmp_path / "first.json")
    assert main(["--params", str(tmp_path / "params.yaml")]) == 0
    assert {name: (tmp_path / name).read_bytes() for name in tracked} == first
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert sorted(p.name for p in (tmp_path / "r" / "samples_base").iterdir()) == [
        "1nfe.png",
        "euler2-cfg2.png",
        "euler2.png",
    ]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "samples_1nfe.png",
        "samples_2nfe.png",
        "samples_base",
    ]
    assert sorted(p.name for p in (tmp_path / "r" / "samples_base").iterdir()) == [
        "1nfe.png",
        "euler2-cfg2.png",
        "euler2.png",
    ]
    # a ratio reference the base does not run, or a bad config: one line, the config family (exit 10)
    params["evaluate"]["ratio_reference"] = "euler50-cfg0.5"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 10
    params["evaluate"]["ratio_reference"] = "euler2-cfg2"
    params["evaluate"]["nfe"] = [0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 10


def test_digits_domain_with_a_tiny_random_net(tmp_path):
    from twinflow_core.checkpoint import load_generator

    gen = load_generator(_tiny_checkpoint(tmp_path / "d", digits.vocabulary(), 0))
    cfg = protocol.EvalConfig.from_dict({**CFG, "digits_per_class": 3})
    assert protocol.domain_of(gen, cfg) == "digits"
    evaluation = ev.Evaluation(cfg, "digits", 32, progress=lambda s: None)
    m = evaluation.run(gen, [protocol.Setting("1nfe", 1, "few")]).metrics
    assert 0.0 <= m["digits/accuracy@1nfe"] <= 0.35
    assert m["features-digits/fd@1nfe"] > evaluation.real_metrics()["features-digits/fd@real"]
