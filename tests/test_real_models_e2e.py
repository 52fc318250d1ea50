"""The README's "A pretrained diffusers model" commands, typed as a user types them, on a pipeline folder the
project did not make (tests/support/plain_sd3.py: plain diffusers/transformers, `save_pretrained`): wrap it,
`dvc add` it, configure, then `twinflow run` with an override (an isolated workspace, which must check the
DVC-tracked folder out) and in place, full fine-tuning and LoRA; switching to LoRA leaves `encode` cached; the
registered versions are lean (the generator's weights and a model card, nothing of the optimiser). The full
fine-tune in place also shows the champion's pyfunc drawing images at 1 NFE, quiet stage logs, and the trained
folder loading in plain diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from support.pipeline import copy_project, start_prefect_server, stop  # noqa: E402

MODEL = "models/tiny-sd3-ext"
SUPPORT = Path(__file__).resolve().parent / "support"


def sh(project, *args, env=None, timeout=600, ok=True):
    out = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert out.returncode == 0, (" ".join(args) + "\n" + out.stdout + out.stderr)[-5000:]
    return out


def registered_sizes(project: Path, uri: str) -> dict:
    """Per registered version: the bytes of its model artifact in the MLflow store (files, total) and of the
    weights it carries (the adapter, or the transformer)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    out = {}
    for mv in client.search_model_versions("name='twinflow-shapes'"):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/twinflow-shapes/{mv.version}"))
        files = {str(p.relative_to(local)): p.stat().st_size for p in sorted(local.rglob("*")) if p.is_file()}
        gen = {k: v for k, v in files.items() if k.startswith("artifacts/")}
        lora = any("lora/" in k for k in gen)
        weights = sum(v for k, v in gen.items() if k.endswith(".safetensors"))
        out[f"v{mv.version}"] = {
            "lora": lora,
            "weights": weights,
            "total": sum(gen.values()),
            "model_total": sum(files.values()),
            "files": gen,
        }
    return out


def check_full_in_place(project: Path, uri: str, out: str) -> None:
    """The full fine-tune run in the checkout: its metrics hold the 1-NFE and reference scores; the registered
    champion's pyfunc draws the same images twice; no third-party noise reached the stage logs; and the trained
    pipeline folder loads in plain diffusers (its export names the project's scheduler and transformer classes)."""
    import diffusers
    import mlflow
    from mlflow.tracking import MlflowClient

    import twinflow_core.adapters.stock  # noqa: F401  (registers the exported classes with diffusers)

    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert "geneval-shapes/overall@1nfe" in metrics and "base/geneval-shapes/overall@euler50-cfg0.5" in metrics
    assert MlflowClient(uri, uri).get_model_version_by_alias("twinflow-shapes", "champion").tags["gate.verdict"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    here = os.getcwd()
    os.chdir(project)  # a lean version names its base pipeline folder relative to the project, as a user runs it
    try:
        model = mlflow.pyfunc.load_model("models:/twinflow-shapes@champion")
        captions = ["a photo of a red circle", "a photo of two blue squares"]
        images = model.predict(captions)
        assert images.dtype.name == "uint8" and images.shape == (2, 32, 32, 3)
        assert (images == model.predict(captions)).all()
    finally:
        os.chdir(here)
    for noise in ("torch_dtype", "requires torchvision", "Loading pipeline components", "were not used when"):
        assert noise not in out, noise
    plain = diffusers.StableDiffusion3Pipeline.from_pretrained(str(project / "checkpoints/twinflow"))
    assert plain.transformer.config.num_layers >= 1


@pytest.mark.slow
def test_the_readme_commands_on_a_pipeline_folder_made_elsewhere(tmp_path):
    project = copy_project(tmp_path / "proj")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    py = sys.executable
    twinflow = [py, "-m", "flows.cli"]
    times = {}

    # "download" (a folder made with plain diffusers), then the README's lines with only the folder substituted
    sh(project, py, str(SUPPORT / "plain_sd3.py"), MODEL, "--image-size", "32", env=env)
    sh(
        project,
        py,
        "-m",
        "twinflow_core.adapters.pipeline",
        "wrap",
        MODEL,
        "--family",
        "sd3",
        "--image-size",
        "32",
        env=env,
    )
    sh(project, py, "-m", "dvc", "add", MODEL, env=env)
    assert (project / f"{MODEL}.dvc").is_file()
    # params.yaml data: the shapes world at the model's size, fewer images (a CPU test)
    from flows.params import apply_overrides, load_params, parse_overrides

    params = load_params(project / "params.yaml")
    apply_overrides(project / "params.yaml", parse_overrides(["data.shapes.n_images=400"], params))
    sh(project, py, "-m", "flows.stages.configure", "experiment=sd3_tiny", f"model.source={MODEL}", env=env)
    params = load_params(project / "params.yaml")
    assert params["train"]["init"] == MODEL and params["evaluate"]["base"] == MODEL

    home = tmp_path / "prefect"
    api, prefect_proc = start_prefect_server(home)
    env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(home)})
    uri = f"sqlite:///{project / 'mlflow.db'}"
    try:
        for label, args in (("full, isolated", [f"evaluate.base={MODEL}"]), ("full, in place", [])):
            start = time.monotonic()
            done = sh(project, *twinflow, "run", *args, env=env, timeout=1800)
            times[label] = round(time.monotonic() - start)
            out = done.stdout
            assert "twinflow-shapes v" in out and "gate: PASSED" in out, out[-3000:]
            stages = out.split("stages: ")[1].split("\n")[0]
            assert "encode" in stages and "train" in stages and "evaluate" in stages and "pretrain ran" not in stages
        check_full_in_place(project, uri, done.stdout + done.stderr)
        # LoRA: configure again; encode reads only the VAE and text encoders, so it stays cached
        sh(
            project,
            py,
            "-m",
            "flows.stages.configure",
            "experiment=sd3_tiny",
            f"model.source={MODEL}",
            "model.finetune=lora",
            "model.lora_rank=4",
            "model.lora_alpha=4",
            env=env,
        )
        status = sh(project, py, "-m", "dvc", "status", "encode", env=env).stdout
        assert "encode" not in status.split("train")[0] or "changed" not in status.split("train")[0], status
        for label, args in (("lora, isolated", [f"evaluate.base={MODEL}"]), ("lora, in place", [])):
            start = time.monotonic()
            out = sh(project, *twinflow, "run", *args, env=env, timeout=1800).stdout
            times[label] = round(time.monotonic() - start)
            assert "twinflow-shapes v" in out, out[-3000:]
            assert "encode ran" not in out, out[-3000:]
        # `twinflow generate` on the registered LoRA version: its base resolved from the version's reference
        sh(
            project,
            *twinflow,
            "generate",
            "a photo of a red circle",
            "--model",
            "models:/twinflow-shapes@challenger",
            "--nfe",
            "1",
            "--out",
            str(tmp_path / "red.png"),
            env=env,
            timeout=900,
        )
    finally:
        stop(prefect_proc)
    sizes = registered_sizes(project, uri)
    print("times (s):", json.dumps(times))
    print("registered versions (bytes):", json.dumps(sizes, indent=1))
    (tmp_path / "sizes.json").write_text(json.dumps(sizes, indent=1))
    for version in sizes.values():
        # no training state, and no second copy of the weights beside the stock transformer/ or lora/ folder
        assert not any(Path(name).name in ("state.ckpt", "model.safetensors") for name in version["files"]), version
        if version["lora"]:
            assert version["total"] <= 1.2 * version["weights"] + 100_000, version
        else:
            assert version["total"] <= 1.05 * version["weights"] + 100_000, version
    (tmp_path / "times.json").write_text(json.dumps(times))
