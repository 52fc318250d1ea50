"""The objective registry: every conf/objective/*.yaml names a registered method that composes, builds and trains;
a new method is one module in twinflow_core/objectives plus one config, and training and `twinflow toy` take it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twinflow_core import objectives
from twinflow_core.nets import build_net
from twinflow_core.training.compose import compose

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "objective").glob("*.yaml"))


def test_the_registry_holds_the_four_methods_with_the_twinflow_family_first():
    assert objectives.names()[:3] == ("twinflow", "rcgm", "fm")
    assert set(CONFIGS) <= set(objectives.names()) and "meanflow" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_each_objective_config_composes_builds_and_takes_a_step(name):
    sections, _ = compose([f"objective={name}", "model=unet_tiny"])
    cfg = sections.objective.train.build("objective.train")
    assert type(cfg) is objectives.get(name).config_cls
    torch.manual_seed(0)
    net = build_net("unet", **sections.model.net_kwargs(), vocab_size=12, max_len=8)
    ids = torch.randint(1, 12, (8, 8))
    loss, stats = objectives.build_objective(cfg)(net, torch.randn(8, 3, 24, 24), ids, uncond=torch.zeros_like(ids))
    loss.backward()
    assert torch.isfinite(loss) and stats["loss"] == pytest.approx(loss.item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


NEW_METHOD = '''
"""A method added for the test: flow matching on the mul rows only, under its own name."""
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective
from twinflow_core.objectives import Method, register

register(Method("zz_plainfm", ObjectiveConfig, TwinFlowObjective,
                {"probs": {"e2e": 0.0, "mul": 1.0, "any": 0.0, "adv": 0.0}, "consistc_ratio": 0.0,
                 "estimate_order": 0, "dist_match_cof": 0.0}, sampler={"style": "euler"}, toy={"loss": "l2"}))
'''


def test_a_new_method_is_one_module_and_one_config(tmp_path, monkeypatch):
    extra = tmp_path / "more_objectives"
    extra.mkdir()
    (extra / "zz_plainfm.py").write_text(NEW_METHOD)
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "objective" / "zz_plainfm.yaml").write_text(
        "# @package objective.train\npreset: zz_plainfm\noverrides: {}\n"
    )
    # the package's module search path gains the folder (as if the file were in twinflow_core/objectives/)
    monkeypatch.setattr(objectives, "__path__", [*objectives.__path__, str(extra)])
    monkeypatch.setattr(objectives, "_METHODS", dict(objectives._METHODS))
    monkeypatch.setattr(objectives, "_LOADED", False)
    monkeypatch.delitem(sys.modules, "twinflow_core.objectives.zz_plainfm", raising=False)
    try:
        sections, _ = compose(["objective=zz_plainfm"], config_dir=conf)
        cfg = sections.objective.train.build("objective.train")
        assert cfg.probs["e2e"] == 0.0 and objectives.get("zz_plainfm").sampler == {"style": "euler"}

        from twinflow_core.toy.runner import ToyConfig, run

        res = run(
            ToyConfig(method="zz_plainfm", steps=3, nfe=(2,), batch_size=16, n_samples=200),
            tmp_path / "toy",
            progress=False,
            plots=False,
        )
        assert res["nfe"]["2"]["sampler"] == "euler"
    finally:
        sys.modules.pop("twinflow_core.objectives.zz_plainfm", None)


def test_toy_command_trains_meanflow_and_refuses_an_unknown_method(tmp_path):
    out = tmp_path / "mf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "toy",
            "--method",
            "meanflow",
            "--steps",
            "4",
            "--nfe",
            "1,2",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"]["1"]["sampler"] == "any" and metrics["config"]["method"] == "meanflow"
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "toy", "--method", "magic", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 10
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "magic" in lines[0] and "meanflow" in lines[0] and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
