"""The small evaluator CNN: a digits classifier and the shapes feature network, trained on real data only.

Its penultimate layer (`features`) is the feature space of the Frechet distance and the diversity figure;
its heads are whatever the domain is trained to predict (digit class; shapes attributes). Weights are
saved as `<dir>/evaluator.safetensors` + `<dir>/evaluator.json` (architecture, training data, accuracy),
small enough to commit under artifacts/evaluators/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from twinflow_core.errors import DataError


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,size,size) in [-1,1] (bilinear resize when H != size)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"evaluator input must be uint8 (N,H,W,3), got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class EvaluatorNet(nn.Module):
    """3 conv stages (stride 2 after the first two) -> global average pool -> `feat_dim` features -> head."""

    def __init__(self, size: int, n_outputs: int, width: int = 32, feat_dim: int = 64, norm: bool = False):
        super().__init__()
        self.config = {"size": size, "n_outputs": n_outputs, "width": width, "feat_dim": feat_dim}
        if norm:  # batch norm trains the multi-label shapes net in far fewer CPU steps
            self.config["norm"] = True
        w = width
        chans = [(3, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in chans:
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.GELU())
        self.body = nn.Sequential(*layers)
        # Position matters in the shapes world ("left of"), so pool to a 2x2 grid rather than to one vector.
        self.proj = nn.Linear(4 * w * 4, feat_dim)
        self.head = nn.Linear(feat_dim, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.body(x), 2).flatten(1)
        return F.gelu(self.proj(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Penultimate features of uint8 images, (N, feat_dim) float64."""
        self.eval()
        out = [
            self.features(to_input(images[i : i + batch], self.config["size"])).double().numpy()
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.config["feat_dim"]))

    @torch.no_grad()
    def predict_logits(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        self.eval()
        out = [self(to_input(images[i : i + batch], self.config["size"])).numpy() for i in range(0, len(images), batch)]
        return np.concatenate(out)


def save_evaluator(directory: str | Path, net: EvaluatorNet, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(directory / "evaluator.safetensors")
    )
    (directory / "evaluator.json").write_text(json.dumps({"config": net.config, **meta}, indent=2) + "\n")
    return directory


def load_evaluator(directory: str | Path) -> tuple[EvaluatorNet, dict]:
    directory = Path(directory)
    meta_path, weights = directory / "evaluator.json", directory / "evaluator.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise DataError(
            f"evaluator not found in {directory} (expected evaluator.json + evaluator.safetensors; "
            f"build it with `python bench/instrument.py --train`)"
        )
    meta = json.loads(meta_path.read_text())
    net = EvaluatorNet(**meta["config"])
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net, meta


def train(
    net: EvaluatorNet,
    images,
    targets: np.ndarray,
    loss: str = "ce",
    epochs: int = 10,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    augment=None,
    progress: bool = True,
) -> EvaluatorNet:
    """Plain AdamW training on uint8 images (or an already prepared float tensor (N,3,S,S) in [-1,1]).
    loss "ce": integer class targets; "bce": multi-label 0/1 float targets.
    `augment(x, generator) -> x` runs on each float batch (e.g. blur and noise, so the evaluator reads
    blurry generated images the way it reads clean ones)."""

    g = torch.Generator().manual_seed(seed)
    x_all = images if isinstance(images, torch.Tensor) else to_input(images, net.config["size"])
    y_all = torch.as_tensor(targets)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (-(-len(x_all) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    bar = tqdm(total=steps, desc="evaluator", disable=not progress, leave=False)
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x, y = x_all[idx], y_all[idx]
            if augment is not None:
                x = augment(x, g)
            logits = net(x)
            err = (
                F.cross_entropy(logits, y.long())
                if loss == "ce"
                else F.binary_cross_entropy_with_logits(logits, y.float())
            )
            opt.zero_grad()
            err.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{err.item():.3f}")
    bar.close()
    net.eval()
    return net


def blur_noise_augment(
    x: torch.Tensor, g: torch.Generator, p: float = 0.5, max_sigma: float = 1.2, max_noise: float = 0.15
) -> torch.Tensor:
    """With probability p per image: Gaussian blur of random sigma and additive noise (in [-1,1] units)."""
    n = x.shape[0]
    pick = torch.rand(n, generator=g) < p
    if not pick.any():
        return x
    x = x.clone()
    sigma = float(torch.rand(1, generator=g)) * max_sigma + 0.3
    k = torch.arange(-2, 3, dtype=torch.float32)
    ker = torch.exp(-(k**2) / (2 * sigma**2))
    ker = ker / ker.sum()
    c = x.shape[1]
    sel = x[pick]
    sel = F.conv2d(F.pad(sel, (2, 2, 0, 0), mode="replicate"), ker.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    sel = F.conv2d(F.pad(sel, (0, 0, 2, 2), mode="replicate"), ker.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
    sel = sel + torch.randn(sel.shape, generator=g) * (float(torch.rand(1, generator=g)) * max_noise)
    x[pick] = sel.clamp(-1, 1)
    return x


def shift_augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in x and y (edges padded with the border value)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
