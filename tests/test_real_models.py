"""A pretrained diffusers model as a user brings one: the settings that cannot train right are refused up front,
and encode's cache does not depend on how the transformer is fine-tuned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from twinflow_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENCODE_READS_NOT = (
    "model.finetune",
    "model.lora_rank",
    "model.lora_alpha",
    "model.lora_targets",
    "model.gradient_checkpointing",
    "model",
)


def test_bf16_weights_with_full_fine_tuning_are_refused_in_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.stages.configure",
            "--params",
            str(params),
            "experiment=sd35_full",
            "model.dtype=bfloat16",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 10 and len(lines) == 1, proc.stderr
    assert "model.dtype bfloat16 with model.finetune full" in lines[0] and "float32" in lines[0]
    # LoRA on a bf16 base is fine (float32 adapters), and so is every shipped preset
    for args in (["experiment=sd35_lora", "model.dtype=bfloat16"], ["experiment=qwen_image_fsdp"]):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.stages.configure", "--params", str(params), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr


def test_encode_params_are_what_it_reads_so_full_lora_and_rank_leave_it_cached():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["encode"]
    params = set(stage["params"])
    assert not params & set(ENCODE_READS_NOT), params
    assert {
        "model.family",
        "model.source",
        "model.max_sequence_length",
        "model.image_size",
        "model.dtype",
        "encode",
    } <= params


def _project(tmp_path, *configure):
    """A project folder holding what `twinflow run` reads before it starts: dvc.yaml and a configured params.yaml."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.stages.configure",
            "--params",
            str(project / "params.yaml"),
            "experiment=sd3_tiny",
            *configure,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return project


def _run(project, *overrides, env=None):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), *overrides],
        capture_output=True,
        text=True,
        cwd=project,
        timeout=300,
        env=env,
    )


def _env(tmp_path, **more):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), **more}
    env.pop("HF_HOME", None)
    return env


def test_a_hub_id_not_in_the_cache_is_one_line_naming_it_and_the_download(tmp_path):
    hub = "stabilityai/stable-diffusion-3.5-medium"
    project = _project(tmp_path, f"model.source={hub}")
    proc = _run(project, env=_env(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 13 and len(lines) == 1, proc.stderr[-3000:]
    assert f"model.source {hub}" in lines[0] and f"hf download {hub} --local-dir models/" in lines[0]
    assert "Traceback" not in proc.stderr and not (project / ".dvc").exists()


def test_a_pipeline_folder_not_yet_wrapped_or_missing_is_refused_before_any_stage(tmp_path):
    project = _project(tmp_path, "model.source=models/mine")
    proc = _run(project, env=_env(tmp_path))
    assert proc.returncode == 13 and "model.source models/mine: no such folder" in proc.stderr, proc.stderr
    (project / "models" / "mine").mkdir(parents=True)
    (project / "models" / "mine" / "model_index.json").write_text("{}")
    proc = _run(project, env=_env(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 13 and len(lines) == 1, proc.stderr
    assert "python -m twinflow_core.adapters.pipeline wrap models/mine --family sd3 --image-size 32" in lines[0]
    # evaluate.base is checked too
    (project / "models" / "mine" / "model.json").write_text("{}")
    proc = _run(project, "evaluate.base=models/elsewhere", env=_env(tmp_path))
    assert proc.returncode == 13 and "evaluate.base models/elsewhere" in proc.stderr, proc.stderr


def test_a_hub_id_in_the_cache_runs_from_its_snapshot_so_the_revision_is_recorded(tmp_path):
    """A Hugging Face cache laid out as huggingface_hub lays it out (models--org--name/{refs/main, snapshots/<rev>})
    with a pipeline made by plain diffusers: the run's params name the snapshot, hence the revision."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-sd3"
    snapshot = repo / "snapshots" / rev
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/support/plain_sd3.py"), str(snapshot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    project = _project(tmp_path, "model.source=someorg/tiny-sd3")
    code = (
        "import json; from flows.config_check import check_overrides; "
        f"print(json.dumps(check_overrides([], {str(project)!r})[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, env=_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    import json

    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed == {k: str(snapshot) for k in ("model.source", "train.init", "evaluate.base")}
    assert (snapshot / "model.json").is_file() and rev in parsed["train.init"]


def test_a_snapshot_is_made_a_base_only_from_the_model_section_never_an_assumed_family(tmp_path):
    """A snapshot without model.json becomes a base generator from model.family and its sizes; a model section
    without a family is one line naming the key, and the snapshot is left as it was (no sd3 is assumed)."""
    from flows.model_source import localise_hub

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    model = {"name": "diffusers", "image_size": 32, "max_sequence_length": 48}
    with pytest.raises(ConfigError, match=r"^model\.family: missing \(conf/model/<family>\.yaml sets it\)$"):
        localise_hub({"model.source": str(snapshot)}, {"model": model}, log=lambda line: None)
    assert list(snapshot.iterdir()) == []
