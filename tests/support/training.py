"""Fixtures for the training tests: a tiny prepared dataset, a shrunk params.yaml, stage runs as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def make_dataset(directory: Path, n: int = 64, size: int = 16, name: str = "shapes") -> Path:
    """A real prepared shapes dataset (the data helper's writer), n images at `size` px."""
    from twinflow_core.data.config import DataConfig
    from twinflow_core.data.prepared import prepare

    out = Path(directory) / name
    if not (out / "meta.json").is_file():
        cfg = DataConfig.from_dict({"name": name, "image_size": size, "shapes": {"n_images": n, "holdout_dir": None}})
        prepare(cfg, root=ROOT, out=out, progress=False)
    return out


def smoke_params(tmp: Path, data: Path, overrides: list[str] | None = None) -> Path:
    """params.yaml for tmp: conf/ composed with experiment=smoke (+ overrides), paths inside tmp."""
    from twinflow_core.training.compose import compose
    from twinflow_core.training.config import to_dict

    sections, _ = compose(
        [
            "experiment=smoke",
            "data.image_size=16",
            f"data.path={data}",
            f"pretrain.out={tmp}/base",
            f"train.out={tmp}/twinflow",
            f"pretrain.resume_dir={tmp}/resume",
            f"train.resume_dir={tmp}/resume",
            *(overrides or []),
        ]
    )
    params = {k: to_dict(getattr(sections, k)) for k in ("model", "objective", "pretrain", "train")}
    path = Path(tmp) / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_cmd(stage: str, params: Path, *sets: str) -> list[str]:
    cmd = [sys.executable, "-m", f"flows.stages.{stage}", "--params", str(params)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def stage_env() -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 DDP ranks on a 2-core box; also makes reruns bitwise comparable
    return env


def run_stage(stage: str, params: Path, *sets: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        stage_cmd(stage, params, *sets), cwd=ROOT, env=stage_env(), capture_output=True, text=True, timeout=timeout
    )


def load_weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def state_difference(a: Path, b: Path) -> list[str]:
    """The entries in which two resume states differ, tensors compared exactly; the run key (a function of the
    run's output folder too) is left out, so two runs of one configuration into two folders compare equal."""
    import torch

    from twinflow_core.training.callbacks import RUN_KEY_FIELD

    def walk(x, y, where: str) -> list[str]:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and torch.equal(x, y)
            )
            return [] if same else [where]
        if isinstance(x, dict) and isinstance(y, dict):
            keys = (set(x) | set(y)) - {RUN_KEY_FIELD}
            return [d for k in sorted(keys, key=str) for d in walk(x.get(k), y.get(k), f"{where}/{k}")]
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            return [d for i, (p, q) in enumerate(zip(x, y)) for d in walk(p, q, f"{where}[{i}]")]
        return [] if x == y else [where]

    load = lambda p: torch.load(p, map_location="cpu", weights_only=False)  # noqa: E731 - states the test wrote
    return walk(load(a), load(b), "")


# The objective presets whose step must not depend on how the batch is split (tests/test_objective_slices.py,
# tests/test_train_micro_batch.py): the default recipe's buckets and guidance, and each preset as published.
SPLIT_PRESETS = [
    ("twinflow", {"enhanced_ratio": 0.5, "probs": {"e2e": 1, "mul": 1, "any": 2, "adv": 1}}),
    ("twinflow", {}),
    ("rcgm", {}),
    ("fm", {}),
]


def perturbed_tiny_unet():
    """An 8 px UNet with every weight nudged off its initial value (zero-initialised layers would hide terms)."""
    import torch

    from twinflow_core.nets import build_net

    torch.manual_seed(0)
    net = build_net(
        "unet",
        image_size=8,
        channels=[8, 8],
        res_blocks=1,
        attn_levels=[1],
        vocab_size=20,
        max_len=8,
        text_dim=8,
        text_layers=1,
        heads=2,
        time_dim=16,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net
