"""Test helpers for the pipeline and registry tests: real servers on loopback, tiny real checkpoints,
and throwaway copies of the project to run DVC and the flow in.

Servers are started as subprocesses and stopped by their PID (never by name).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml
from support import mlflow_db, prefect_db

from flows import servers
from flows.servers import BIN, free_port, stop, wait_http  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def start_prefect_server(home: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """flows.servers.start_prefect_server (sqlite in `home`) on a copy of the suite's migrated database."""
    prefect_db.seed(home)
    return servers.start_prefect_server(home, port)


def start_mlflow_server(store: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """flows.servers.start_mlflow_server (sqlite in `store`) on a copy of the suite's migrated database."""
    mlflow_db.seed(store / "mlflow.db")
    return servers.start_mlflow_server(store, port)


# ---- tiny real artifacts for registry tests ----

CAPTIONS = ["a red circle", "a blue square", "two green triangles", "a red square above a blue circle"]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny real generator (the registry's unet, real tokenizer) saved by the real save_generator."""
    import torch

    from twinflow_core.checkpoint import save_generator
    from twinflow_core.nets import build_net
    from twinflow_core.text import Tokenizer

    torch.manual_seed(seed)
    tok = Tokenizer.from_captions(CAPTIONS, max_len=8)
    kwargs = dict(
        image_size=8,
        channels=[8, 8],
        res_blocks=1,
        attn_levels=[],
        vocab_size=tok.size,
        max_len=8,
        text_dim=8,
        text_layers=1,
        heads=2,
        time_dim=16,
    )
    net = build_net("unet", **kwargs)
    # the unet zero-initialises its output layer; perturb it so generated images depend on the weights
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_generator(path, net, "unet", kwargs, tok, {"seed": seed})
    return path


GATE = {"min": {"geneval-shapes/overall@1nfe": 0.5, "dpg-shapes/score@1nfe": 50.0}, "champion_margin": 0.05}


def make_outputs(
    root: Path, scores: dict[str, float], seed: int = 0, model_name: str = "tiny-gen", gate: dict | None = None
) -> Path:
    """A project folder as the stages leave it: params.yaml (gate, register), metrics/eval.json,
    checkpoints/twinflow (real tiny generator), a sample grid and a data report."""
    from twinflow_core.viz import save_image_grid

    root.mkdir(parents=True, exist_ok=True)
    params = {"gate": gate or GATE, "register": {"model_name": model_name, "experiment": "tests"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps(scores, indent=1))
    ckpt = root / "checkpoints" / "twinflow"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    make_checkpoint(ckpt, seed)
    from twinflow_core.checkpoint import load_generator

    images = load_generator(ckpt).generate(CAPTIONS, nfe=1, seed=0)
    save_image_grid(images, root / "reports" / "samples_1nfe.png", captions=CAPTIONS)
    (root / "reports" / "data").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "data" / "validation.json").write_text(json.dumps({"success": True}))
    return root


def scores(geneval: float, dpg: float) -> dict[str, float]:
    """An eval.json in the evaluate stage's naming, with the flow-matching reference beside 1 NFE."""
    return {
        "geneval-shapes/overall@1nfe": geneval,
        "dpg-shapes/score@1nfe": dpg,
        "geneval-shapes/overall@2nfe": geneval + 0.01,
        "base/geneval-shapes/overall@euler50-cfg0.5": 0.9,
        "base/dpg-shapes/score@euler50-cfg0.5": 90.0,
        "ratio/geneval-shapes/overall@1nfe": geneval / 0.9,
        "ratio/geneval-shapes/overall_se@1nfe": 0.04,
        "ratio/dpg-shapes/score@1nfe": dpg / 90.0,
        "ratio/dpg-shapes/score_se@1nfe": 0.05,
    }


# ---- a throwaway DVC project with stand-in stages (tests/support/toy_stages.py) ----


def make_toy_project(root: Path, **toy) -> Path:
    """git + DVC project whose five stages are the fast stand-ins; the DVC remote is root/.dvc-remote."""
    from support.toy_stages import DVC_YAML

    root.mkdir(parents=True, exist_ok=True)
    params = {
        "toy": {
            "size": 16,
            "seed": 0,
            "fail": "",
            "flaky_stage": "",
            "flaky": 0,
            "geneval": 0.8,
            "dpg": 80.0,
            "sleep_stage": "",
            "sleep": 0,
            **toy,
        },
        "gate": GATE,
        "register": {"model_name": "tiny-gen", "experiment": "tests"},
        "pipeline": {"push": True, "dvc_remote": "", "retries": 2, "retry_delay_s": 0.1},
    }
    (root / "params.yaml").write_text("# toy project params\n" + yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / ".gitignore").write_text("attempts.log\nmlflow.db\nmlartifacts/\n.dvc-remote/\n")

    def sh(*args: str) -> None:
        subprocess.run(args, cwd=root, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "test@example.com")
    sh("git", "config", "user.name", "test")
    sh(str(BIN / "dvc"), "init", "-q")
    sh(str(BIN / "dvc"), "config", "core.analytics", "false")
    sh(str(BIN / "dvc"), "remote", "add", "-d", "local", ".dvc-remote")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "toy project")
    mlflow_db.seed(root / "mlflow.db")  # git-ignored: the store the register stage opens, migrated already
    return root


def toy_env() -> dict[str, str]:
    """PYTHONPATH so that `python -m support.toy_stages` resolves from a project outside tests/."""
    tests_dir = str(Path(__file__).resolve().parents[1])
    return {"PYTHONPATH": os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)}


# ---- a copy of the real project, for the end-to-end runs (tests/test_pipeline_e2e.py, test_pipeline_sigkill.py) ----

# A run of seconds per stage: a few images, the tiny net, 4 steps, a handful of prompts; gate at 0 so it passes.
TINY = [
    "data.shapes.n_images=400",
    "model.channels=[16,32]",
    "model.attn_levels=[1]",
    "model.text_dim=32",
    "model.text_layers=1",
    "model.heads=2",
    "model.time_dim=32",
    "pretrain.steps=4",
    "pretrain.batch_size=16",
    "pretrain.ckpt_every=2",
    "pretrain.sample_every=0",
    "pretrain.progress=false",
    "train.init=checkpoints/base",
    "evaluate.base=checkpoints/base",  # a fresh tiny base, not the committed one
    "optional_stages.pretrain=[used]",  # which declares the pretrain stage (flows/stage_use.py)
    "train.steps=4",
    "train.batch_size=16",
    "train.ckpt_every=2",
    "train.sample_every=0",
    "train.progress=false",
    "evaluate.images_per_prompt=2",  # the default guided 50-step reference: 16 images of a tiny net
    "evaluate.geneval_max_prompts=6",
    "evaluate.dpg_max_items=2",
    "evaluate.grid_prompts=4",
    "evaluate.batch=16",
    "gate.min.geneval-shapes/overall@1nfe=0.0",
    "gate.min.dpg-shapes/score@1nfe=0.0",
    "gate.ratio.geneval-shapes/overall@1nfe=0",
    "gate.ratio.dpg-shapes/score@1nfe=0",
]


def copy_project(dest: Path) -> Path:
    """What a fresh clone has: tracked and not-ignored files (no outputs, no dvc.lock, no caches)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if rel == "dvc.lock" or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    for rel in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    for args in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "copy"],
    ):
        subprocess.run(args, cwd=dest, check=True, capture_output=True)
    mlflow_db.seed(dest / "mlflow.db")  # git-ignored: the store the stages open, migrated already (~6 s less a run)
    return dest
