"""The pretrained diffusers model's configuration: conf/model/<family>.yaml and the experiment presets compose and
validate, a misspelled key is one line naming it, and the default (UNet, shapes) pipeline's stages are what
dvc.lock recorded: same commands, same dependency paths, same parameter values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from twinflow_core.errors import ConfigError
from twinflow_core.training.compose import compose
from twinflow_core.training.config import PretrainedModelConfig, to_dict
from twinflow_core.training.config_checks import load_sections

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "sd35_full": ("sd3", "full", "ddp"),
    "sd35_lora": ("sd3", "lora", "ddp"),
    "qwen_image_fsdp": ("qwen_image", "full", "fsdp"),
    "sd3_tiny": ("sd3", "full", "auto"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_composes_into_a_latent_experiment(name):
    sections, extra = compose([f"experiment={name}"])
    family, finetune, strategy = PRESETS[name]
    m = sections.model
    assert isinstance(m, PretrainedModelConfig) and (m.family, m.finetune) == (family, finetune)
    assert sections.train.trainer.strategy == strategy
    # trains on the encode stage's latents, from the pipeline folder the model names
    assert sections.train.data == sections.encode.out and sections.train.init == m.source
    assert m.image_size == extra["data"]["image_size"]
    if strategy == "fsdp":
        assert sections.train.ema_decay == 0.0  # the official FSDP run keeps no EMA copy


@pytest.mark.parametrize("family", ["sd3", "sd35", "qwen_image", "sana"])
def test_each_model_config_names_its_family_and_a_pipeline(family):
    sections, _ = compose([f"model={family}"])
    assert sections.model.family == ("sd3" if family == "sd35" else family)
    assert sections.model.source and sections.model.name == "diffusers"


def test_the_tiny_preset_says_its_gate_cannot_mean_quality():
    _, extra = compose(["experiment=sd3_tiny"])
    assert set(extra["gate"]["min"].values()) == {0.0}
    assert set(extra["gate"]["ratio"].values()) == {0.0}
    text = (REPO / "conf/experiment/sd3_tiny.yaml").read_text()
    assert "scores mean nothing" in text


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.lora_rnak=4", "lora_rnak"),
        ("+model.gradient_checkpoint=true", "gradient_checkpoint"),
        ("model.finetune=half", "finetune"),
        ("model.family=flux", "family"),
        ("encode.batch=0", "encode.batch"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(override, key):
    with pytest.raises(ConfigError) as err:
        compose(["experiment=sd3_tiny", override])
    assert "\n" not in str(err.value) and key in str(err.value)


def test_params_yaml_of_the_tiny_experiment_passes_the_whole_check_and_rejects_a_typo(tmp_path):
    from flows.config_check import check_params
    from flows.stages.configure import main

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    assert main(["--params", str(params), "experiment=sd3_tiny"]) == 0
    loaded = yaml.safe_load(params.read_text())
    assert loaded["gate"]["ratio"]["geneval-shapes/overall@1nfe"] == 0.0
    assert loaded["evaluate"]["base"] == "artifacts/pretrained/sd3-tiny"
    check_params(loaded)
    assert main(["--params", str(params), "--check", "experiment=sd3_tiny"]) == 0
    loaded["model"]["lora_rnak"] = 8
    with pytest.raises(ConfigError, match=r"model\.lora_rnak"):
        check_params(loaded)
    # the UNet schema is not loosened by the pretrained one
    unet = yaml.safe_load((REPO / "params.yaml").read_text())
    unet["model"]["family"] = "sd3"
    with pytest.raises(ConfigError, match=r"model\.family"):
        load_sections(unet)


def test_encode_refuses_a_unet_model_in_one_line():
    from flows.stages.encode import run

    with pytest.raises(ConfigError, match="latent shards are for a pretrained diffusers model"):
        run(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_the_flow_runs_encode_only_for_latent_experiments():
    from flows.pipeline import encode_unused

    default = yaml.safe_load((REPO / "params.yaml").read_text())
    assert encode_unused(default)
    sections, _ = compose(["experiment=sd3_tiny"])
    assert encode_unused({"encode": to_dict(sections.encode), "train": to_dict(sections.train)}) == ""


def _interpolate(value: str, params: dict) -> str:
    def lookup(match):
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", lookup, value)


def test_the_default_stages_are_what_dvc_lock_recorded():
    """Adding the latent path left the default run's stages alone: each stage dvc.lock holds has the same command,
    the same dependency paths and the same parameter values (only the code's hashes may differ)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert "encode" not in lock
    for name, locked in lock.items():
        stage = stages[name]
        assert stage["cmd"] == locked["cmd"], name
        deps = {_interpolate(d, params) for d in stage.get("deps", [])}
        assert deps == {d["path"] for d in locked.get("deps", [])}, name
        for key, value in (locked.get("params") or {}).get("params.yaml", {}).items():
            node = params
            for part in key.split("."):
                node = node[part]
            assert node == value, f"{name}: {key}"
