"""The 2-D benchmark: metrics on known sets, the `twinflow toy` command's outputs and its bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from twinflow_core.toy import data2d, metrics2d


def test_metrics_separate_equal_and_different_sets():
    rng = np.random.default_rng(0)
    a, b = data2d.eight_gaussians(4000, rng), data2d.eight_gaussians(4000, rng)
    shifted = b + np.array([0.5, 0.0])
    same, diff = metrics2d.all_metrics(a, b), metrics2d.all_metrics(shifted, b)
    # sliced W2 between two samples of one distribution has a noise floor (~0.1 at n=4000: mode shares vary)
    assert diff["sliced_w2"] > 3 * same["sliced_w2"]
    for key in ("mmd", "energy"):
        assert diff[key] > 50 * same[key], key
    assert metrics2d.sliced_wasserstein(b + np.array([0.3, 0.0]), b) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)


def test_mode_coverage_sees_collapse_and_dropping():
    centers = data2d.eight_gaussian_centers()
    good = metrics2d.mode_coverage(data2d.eight_gaussians(8000, np.random.default_rng(1)), centers, 0.1)
    assert good["in_mode_fraction"] > 0.98 and good["modes_covered"] == 8 and good["mode_kl"] < 0.01
    mean_collapse = metrics2d.mode_coverage(np.zeros((100, 2)), centers, 0.1)
    assert mean_collapse["in_mode_fraction"] == 0.0
    dropped = metrics2d.mode_coverage(np.repeat(centers[:2], 50, axis=0), centers, 0.1)
    assert dropped["modes_covered"] == 2 and dropped["mode_kl"] == pytest.approx(np.log(4), rel=1e-6)


def test_toy_command_writes_metrics_samples_and_plots(tmp_path):
    from flows.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "toy",
                "--data",
                "8gaussians",
                "--method",
                "twinflow",
                "--steps",
                "8",
                "--nfe",
                "1,2",
                "--batch-size",
                "64",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["nfe"]) == {"1", "2"}
    for k in ("sliced_w2", "mmd", "energy", "in_mode_fraction", "modes_covered"):
        assert k in metrics["nfe"]["1"]
    samples = np.load(out / "samples_nfe1.npy")
    assert samples.shape == (10_000, 2) and np.isfinite(samples).all()
    assert (out / "scatter_nfe2.png").stat().st_size > 1000


def test_toy_reads_a_user_npy_in_its_own_units(tmp_path):
    from twinflow_core.toy.runner import ToyConfig, run

    pts = np.random.default_rng(0).normal([100.0, -50.0], [5.0, 1.0], size=(2000, 2))
    np.save(tmp_path / "mine.npy", pts)
    res = run(
        ToyConfig(data=str(tmp_path / "mine.npy"), method="fm", steps=5, nfe=(4,), batch_size=32, n_samples=500),
        tmp_path / "out",
        progress=False,
        plots=False,
    )
    samples = np.load(tmp_path / "out" / "samples_nfe4.npy")
    assert abs(samples[:, 0].mean() - 100.0) < 10  # mapped back to the data's units
    assert res["nfe"]["4"]["sampler"] == "euler"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (np.zeros((500, 3)), "shape (n, 2)"),
        (np.full((500, 2), np.nan), "NaN"),
        (b"not an array", "not a readable .npy"),
    ],
)
def test_bad_npy_gives_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "toy", "--data", str(path), "--steps", "2", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 11
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


def test_unknown_data_name_is_a_clear_error(tmp_path):
    from flows.cli import main

    assert main(["toy", "--data", "spirals", "--steps", "2", "--out", str(tmp_path)]) == 11


@pytest.mark.parametrize("n", [1, 2, 333, 4000])
def test_quantiles_are_numpys_bitwise(n):
    v = np.random.default_rng(n).standard_normal((n, 64)) * 3
    qs = np.linspace(0.0005, 0.9995, 2000)
    assert np.array_equal(metrics2d.quantiles(v, qs), np.quantile(v, qs, axis=0))
