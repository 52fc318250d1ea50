"""Builds the evaluator artifacts from real (rendered or scanned) data only, deterministically from a seed.

- shapes crop classifier (the shapes detector's shape reader): alpha crops of components found in rendered
  scenes, clean or blurred/noised, labelled by the scene's ground truth; fragments, merges and the blends
  of averaged scenes are the not-an-object class;
- shapes feature network (Frechet distance / diversity): full renders -> which (colour, class) objects are
  present and how many of each class;
- digits classifier (accuracy, and its features for FD / diversity): sklearn's digits, the first
  `DIGITS_TRAIN` scans in sklearn's order; the rest are its held-out test set.

Nothing here sees a generated image. `bench/instrument.py --train` calls these and writes
artifacts/evaluators/<name>/.
"""

# Lazy imports: scipy
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twinflow_core.benchmarks.evaluator_net import (
    EvaluatorNet,
    blur_noise_augment,
    save_evaluator,
    shift_augment,
    train,
)
from twinflow_core.benchmarks.shapes_detector import CROP, JUNK, SHAPE_CLASSES, components
from twinflow_core.data import shapes
from twinflow_core.data.digits import digits_samples
from twinflow_core.data.shapes import COLORS

DIGITS_TRAIN = 1200
SHAPES_TRAIN_SEED = 1009  # render seed of evaluator training scenes (the training data uses data.seed)


def degrade(image: np.ndarray, rng: np.random.Generator, max_sigma: float = 1.0, max_noise: float = 10.0) -> np.ndarray:
    """Gaussian blur of random sigma and additive noise (pixel units): a stand-in for imperfect samples."""
    from scipy import ndimage

    img = np.asarray(image, np.float32)
    sigma = float(rng.uniform(0.0, max_sigma))
    if sigma > 0.2:
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img + rng.normal(0, rng.uniform(0, max_noise), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop_dataset(n_images: int, size: int, seed: int = SHAPES_TRAIN_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(alpha crops (N, CROP, CROP), labels 0..4) from rendered scenes."""

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    samples = list(shapes.shapes_samples(n_images, size, seed))
    for i, s in enumerate(tqdm(samples, desc="crops", leave=False)):
        img = s.image if rng.random() < 0.4 else degrade(s.image, rng)
        for c in components(img):
            match = [o for o in s.scene["objects"] if o["color"] == c.color and _iou(o["box"], c.box) > 0.5]
            crops.append(c.alpha_crop)
            labels.append(SHAPE_CLASSES.index(match[0]["class"]) if len(match) == 1 else JUNK)
        if i % 4 == 0:  # blends of 2-4 scenes: whatever components they leave are not objects
            k = int(rng.integers(2, 5))
            others = [samples[int(j)].image for j in rng.choice(len(samples), k - 1)]
            blend = np.mean([s.image, *others], axis=0).round().astype(np.uint8)
            for c in components(blend):
                crops.append(c.alpha_crop)
                labels.append(JUNK)
    return np.stack(crops).astype(np.float32), np.asarray(labels)


def train_shape_classifier(
    out: str | Path, n_images: int = 3000, size: int = 32, epochs: int = 8, seed: int = SHAPES_TRAIN_SEED
) -> dict:
    torch.manual_seed(seed)
    crops, labels = crop_dataset(n_images, size, seed)
    n_val = len(crops) // 10
    x = torch.from_numpy(crops)[:, None].repeat(1, 3, 1, 1) * 2 - 1
    net = EvaluatorNet(CROP, JUNK + 1, width=24, feat_dim=64)
    train(net, x[n_val:], labels[n_val:], "ce", epochs=epochs, seed=seed)
    with torch.no_grad():
        acc = float((net(x[:n_val]).argmax(1).numpy() == labels[:n_val]).mean())
    meta = {
        "kind": "shapes-crop-classifier",
        "classes": [*SHAPE_CLASSES, "junk"],
        "render_seed": seed,
        "n_images": n_images,
        "image_size": size,
        "n_crops": int(len(crops)),
        "label_counts": np.bincount(labels, minlength=JUNK + 1).tolist(),
        "val_accuracy": acc,
    }
    save_evaluator(out, net, meta)
    return meta


def shapes_targets(scenes: list[dict]) -> np.ndarray:
    """Per scene: 24 (colour, class) presence bits, then 4 x 5 one-hot counts (0..4) per class."""

    colors = list(COLORS)
    y = np.zeros((len(scenes), len(colors) * len(SHAPE_CLASSES) + 5 * len(SHAPE_CLASSES)), np.float32)
    for i, sc in enumerate(scenes):
        counts = [0] * len(SHAPE_CLASSES)
        for o in sc["objects"]:
            k = SHAPE_CLASSES.index(o["class"])
            y[i, colors.index(o["color"]) * len(SHAPE_CLASSES) + k] = 1
            counts[k] += 1
        for k, n in enumerate(counts):
            y[i, len(colors) * len(SHAPE_CLASSES) + 5 * k + min(n, 4)] = 1
    return y


def train_shapes_features(
    out: str | Path, n_images: int = 3000, size: int = 32, epochs: int = 12, seed: int = SHAPES_TRAIN_SEED + 1
) -> dict:
    torch.manual_seed(seed)
    samples = list(shapes.shapes_samples(n_images, size, seed))
    images = np.stack([s.image for s in samples])
    y = shapes_targets([s.scene for s in samples])
    n_val = n_images // 10
    net = EvaluatorNet(size, y.shape[1], width=16, feat_dim=64, norm=True)
    train(net, images[n_val:], y[n_val:], "bce", epochs=epochs, lr=3e-3, seed=seed)
    pred = net.predict_logits(images[:n_val]) > 0
    meta = {
        "kind": "shapes-features",
        "render_seed": seed,
        "n_images": n_images,
        "image_size": size,
        "targets": "24 (colour, class) presence + 4 x 5 class counts",
        "val_exact_match": float((pred == (y[:n_val] > 0.5)).all(1).mean()),
        "val_bit_accuracy": float((pred == (y[:n_val] > 0.5)).mean()),
    }
    save_evaluator(out, net, meta)
    return meta


def digits_arrays(size: int) -> tuple[np.ndarray, np.ndarray]:
    samples = list(digits_samples(size))
    return np.stack([s.image for s in samples]), np.asarray([s.label for s in samples])


def train_digits_classifier(
    out: str | Path, size: int = 32, epochs: int = 20, seed: int = 0, net_size: int = 16
) -> dict:
    """`size`: the prepared digits' image size; the net reads them resized to `net_size` (the scans are 8x8)."""

    torch.manual_seed(seed)
    images, labels = digits_arrays(size)
    tr, te = slice(0, DIGITS_TRAIN), slice(DIGITS_TRAIN, None)
    net = EvaluatorNet(net_size, 10, width=32, feat_dim=64)
    # One-pixel shifts (the scans are few) and mild blur only: the classifier should read a slightly soft
    # digit, while its features still move away from the data for a blurry one (what the FD figure is for).
    train(
        net,
        images[tr],
        labels[tr],
        "ce",
        epochs=epochs,
        seed=seed,
        augment=lambda x, g: blur_noise_augment(shift_augment(x, g), g, p=0.3, max_sigma=0.6, max_noise=0.05),
    )
    acc = float((net.predict_logits(images[te]).argmax(1) == labels[te]).mean())
    meta = {
        "kind": "digits-classifier",
        "image_size": size,
        "train": f"sklearn digits [0, {DIGITS_TRAIN})",
        "test": f"sklearn digits [{DIGITS_TRAIN}, 1797)",
        "test_accuracy": acc,
    }
    save_evaluator(out, net, meta)
    return meta
