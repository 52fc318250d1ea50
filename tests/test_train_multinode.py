"""Two nodes on loopback: two `torchrun --nnodes 2 --nproc-per-node 1` processes (gloo) run the real `train`
stage entry point, unchanged, from an S3 init (moto on 127.0.0.1), and match one process.

Same params file for both runs (the trainer section says 1 device, 1 node: under torchrun the launcher's
environment decides), the default micro_batch (0: the global batch of 16 in two halves of 8 on one or two
processes, training/config.py micro_rows), same seed. One process accumulates the halves' gradients, each node
computes one half and gloo's all-reduce adds the two; the objective draws the global batch's noise, partition and
caption dropout and each half takes its rows (twinflow_core/objective.py _Slice). So losses, grad norms and
weights are bitwise equal (with one forward of 16 rows on one process against 8 per node they were 3.3e-6 apart,
float summation order; with noise drawn per micro-batch the step-1 losses were 1.7434 vs 1.8405).
Also checked: each node fetched the init once into its own folder, and only global rank 0 wrote outputs.

The fetch protocol itself (local rank 0 fetches, the node's other ranks wait for its marker of this launch, a
stale marker is not taken, rank 0's failure reaches the others) runs below with three ranks at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flows import init_source
from tests.support.s3 import moto_endpoint, s3_env, upload  # noqa: F401 (fixtures)
from tests.support.training import ROOT, load_weights, make_dataset, run_stage, smoke_params, stage_cmd, stage_env
from twinflow_core.errors import DataError
from twinflow_core.training.config import TrainerConfig
from twinflow_core.training.launch import Launch, detect, placement

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _history(out: Path) -> list[dict]:
    return json.loads((out / "train_log.json").read_text())


def test_launcher_environment_decides_the_placement():
    cfg = TrainerConfig(devices=1, num_nodes=1, strategy="auto")
    torchrun = {
        "RANK": "3",
        "GROUP_RANK": "1",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "WORLD_SIZE": "4",
        "TORCHELASTIC_RUN_ID": "job7",
    }
    launch = detect(1, 1, torchrun)
    assert (launch.launcher, launch.num_nodes, launch.devices, launch.node_rank, launch.global_rank) == (
        "torchrun",
        2,
        2,
        1,
        3,
    )
    assert placement(cfg, launch) == TrainerConfig(devices=2, num_nodes=2, strategy="ddp")
    slurm = {
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_PROCID": "4",
        "SLURM_JOB_ID": "99",
        "SLURM_JOB_NAME": "twinflow",
    }
    launch = detect(1, 1, slurm)
    assert (launch.launcher, launch.num_nodes, launch.devices, launch.global_rank) == ("slurm", 2, 4, 4)
    assert launch.launch_id == "slurm:99:0:0"
    # an interactive allocation is not a SLURM-managed launch (as Lightning): Lightning's own launcher
    env = {**slurm, "SLURM_JOB_NAME": "interactive"}
    launch = detect(2, 1, env)
    assert (launch.launcher, launch.devices, launch.local_rank) == ("lightning", 2, 0)
    assert env["TWINFLOW_LAUNCH_ID"] == launch.launch_id  # what the spawned local ranks inherit
    assert placement(cfg, launch) is cfg
    with pytest.raises(Exception, match="--ntasks-per-node"):
        detect(1, 1, {k: v for k, v in slurm.items() if k != "SLURM_NTASKS_PER_NODE"})


def test_ranks_of_a_node_wait_for_local_rank_0s_fetch(tmp_path, s3_env, monkeypatch):
    from tests.support.pipeline import make_checkpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    upload(s3_env, make_checkpoint(tmp_path / "gen", seed=1), "inits", "base")
    dest = tmp_path / "checkpoints" / "train-init"

    def launch(local: int, lid: str) -> Launch:
        return Launch("torchrun", 2, 3, 1, local, 3 + local, lid)

    # a marker of an earlier launch is not taken for this one
    node = dest.with_name("train-init-node1")
    node.parent.mkdir(parents=True)
    (node.parent / ".train-init-node1.done").write_text(json.dumps({"launch": "old"}))
    results: dict[int, object] = {}

    def rank(local: int, ref: str, lid: str):
        try:
            results[local] = init_source.fetch_for_launch(
                ref, dest, None, launch(local, lid), timeout_s=60, poll_s=0.05
            )
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[local] = err

    for ref, lid in (("s3://inits/base", "new"), ("s3://inits/missing", "next")):
        results.clear()
        threads = [threading.Thread(target=rank, args=(i, ref, lid)) for i in (2, 1, 0)]  # waiters first
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if lid == "new":
            assert results == {0: node, 1: node, 2: node}
            assert json.loads((node / "source.json").read_text())["uri"] == "s3://inits/base"
        else:
            assert isinstance(results[0], DataError)
            for i in (1, 2):
                assert isinstance(results[i], DataError) and "local rank 0 could not fetch it" in str(results[i])
            assert (node / "model.safetensors").is_file()  # the earlier fetch is left as it was
    with pytest.raises(DataError, match="waited 0 s"):
        init_source.fetch_for_launch("s3://inits/base", dest, None, launch(1, "nobody"), timeout_s=0.2)


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_process(tmp_path, s3_env):
    data = make_dataset(tmp_path / "data")
    # the default micro_batch (0): the batch of 16 in two halves of 8, both on one process, one per node
    params = smoke_params(
        tmp_path, data, ["objective.train.preset=twinflow", "pretrain.steps=2", "train.steps=3", "train.cond_drop=0.25"]
    )
    base = run_stage("pretrain", params)
    assert base.returncode == 0, base.stderr[-3000:]
    upload(s3_env, tmp_path / "base", "models", "runs/base")
    init = "train.init=s3://models/runs/base"
    env = {
        **stage_env(),
        "AWS_ENDPOINT_URL": s3_env,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-printed",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    single = subprocess.run(
        stage_cmd("train", params, init, f"train.out={tmp_path}/one/twinflow"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    from flows.servers import free_port

    port, out = free_port(), tmp_path / "two" / "twinflow"
    nodes = []
    for rank in (0, 1):
        cmd = [
            TORCHRUN,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(rank),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "flows.stages.train",
            *stage_cmd("train", params, init, f"train.out={out}")[3:],
        ]
        nodes.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [p.communicate(timeout=300) for p in nodes]
    for p, (_stdout, stderr) in zip(nodes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    summary = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert (summary["launcher"], summary["world_size"], summary["num_nodes"]) == ("torchrun", 2, 2)
    assert not outputs[1][0].strip()  # global rank 1 printed (and wrote) no summary

    h1, h2 = _history(tmp_path / "one" / "twinflow"), _history(out)
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [1, 2, 3]
    w1, w2 = load_weights(tmp_path / "one" / "twinflow"), load_weights(out)
    assert w1.keys() == w2.keys()
    weight_diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    keys = ("loss", "loss/adv", "loss/rectify", "grad_norm")
    diff = {key: max(abs(a[key] - b[key]) for a, b in zip(h1, h2)) for key in keys}
    print(f"two nodes vs one process: max |dw| {weight_diff:.3g}, max difference {diff}")
    assert h1[0]["loss"] != h1[-1]["loss"]  # the steps did something
    assert weight_diff == 0.0 and all(v == 0.0 for v in diff.values()), (weight_diff, diff)

    # each node fetched the init once, into its own folder, and marked it for this launch
    fetched = {p.name for p in (tmp_path / "two").iterdir()}
    assert {"train-init-node0", "train-init-node1", "twinflow"} <= fetched and "train-init" not in fetched
    sha = {json.loads((tmp_path / "two" / f"train-init-node{i}" / "source.json").read_text())["sha256"] for i in (0, 1)}
    assert len(sha) == 1
