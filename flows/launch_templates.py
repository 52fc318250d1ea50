"""Launch templates rendered from the project's settings: an sbatch script (SLURM), a Prefect kubernetes work-pool
base job template, and a Kubeflow PyTorchJob manifest for multi-node training.

    python -m flows.launch_templates sbatch     [--params params.yaml] [--stage train] [--set key=value ...]
    python -m flows.launch_templates pytorchjob [...]      (YAML on stdout)
    python -m flows.launch_templates k8s-pool   [...]      (JSON: `prefect work-pool create --base-job-template`)

Nodes and processes per node come from the stage's trainer section (params.yaml: <stage>.trainer.num_nodes and
devices); image, namespace, volume claim, partition, time limit from --set (defaults below). Every template runs
the stage command exactly as dvc.yaml writes it (`python -m flows.stages.<stage>`, torchrun for a PyTorchJob),
so dvc.lock's `cmd` does not change: the launcher's environment places the ranks (twinflow_core/training/launch.py).
The sbatch script is submitted with `sbatch --wait`, which blocks until the job ends and returns its exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from twinflow_core.errors import ConfigError

DEFAULTS = {
    "image": "registry.internal/twinflow-worker:latest",
    "namespace": "twinflow",
    "claim": "twinflow-work",          # a ReadWriteMany volume: checkout, DVC cache, checkpoints, resume states
    "mount": "/work",
    "workdir": "/work/twinflow",       # the checkout on the shared volume
    "partition": "gpu",
    "time": "24:00:00",
    "cpus_per_task": 8,
    "requeue_signal_seconds": 120,     # SIGUSR1 that long before the time limit: Lightning saves and requeues
    "gpu_resource": "nvidia.com/gpu",
    "master_port": 29500,
}


def placement(params_path: str | Path, stage: str) -> tuple[int, int]:
    """(nodes, processes per node) of `stage` from params.yaml's trainer section."""
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    trainer = (raw.get(stage) or {}).get("trainer") or {}
    nodes, devices = trainer.get("num_nodes", 1), trainer.get("devices", 1)
    if not (isinstance(nodes, int) and isinstance(devices, int) and nodes >= 1 and devices >= 1):
        raise ConfigError(f"{params_path}: {stage}.trainer.num_nodes / devices must be integers >= 1, "
                          f"got {nodes!r} / {devices!r}")
    return nodes, devices


def sbatch(stage: str, nodes: int, devices: int, s: dict) -> str:
    lines = [
        "#!/bin/bash",
        f"# TwinFlow `{stage}` on {nodes} node(s) x {devices} GPU(s): one srun task per GPU (Lightning's SLURM",
        "# environment reads the ranks); submit with `sbatch --wait` so the caller blocks until the job ends.",
        f"#SBATCH --job-name=twinflow-{stage}",
        f"#SBATCH --partition={s['partition']}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        f"#SBATCH --gpus-per-node={devices}",
        f"#SBATCH --cpus-per-task={s['cpus_per_task']}",
        f"#SBATCH --time={s['time']}",
        f"#SBATCH --signal=SIGUSR1@{s['requeue_signal_seconds']}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output=outputs/slurm/{stage}-%j.out",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        "mkdir -p outputs/slurm",
        "# a requeued job resumes from its last state in <stage>.resume_dir (shared storage)",
        f'srun --kill-on-bad-exit=1 python -m flows.stages.{stage} "$@"',
        "",
    ]
    return "\n".join(lines)


def _container(s: dict, devices: int, command: list[str]) -> dict:
    return {
        "name": "pytorch",  # the training operator finds the training container by this name
        "image": s["image"],
        "command": command,
        "workingDir": s["workdir"],
        "resources": {"limits": {s["gpu_resource"]: devices}},
        "volumeMounts": [{"name": "work", "mountPath": s["mount"]}, {"name": "shm", "mountPath": "/dev/shm"}],
    }


def _volumes(s: dict) -> list[dict]:
    return [{"name": "work", "persistentVolumeClaim": {"claimName": s["claim"]}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}}]  # NCCL / dataloader shared memory


def pytorchjob(stage: str, nodes: int, devices: int, s: dict) -> dict:
    # torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT set by the operator
    command = ["torchrun", "-m", f"flows.stages.{stage}"]

    def replica(n: int) -> dict:
        return {"replicas": n, "restartPolicy": "OnFailure",
                "template": {"spec": {"containers": [_container(s, devices, command)], "volumes": _volumes(s)}}}

    specs = {"Master": replica(1)}
    if nodes > 1:
        specs["Worker"] = replica(nodes - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": f"twinflow-{stage}", "namespace": s["namespace"]},
            "spec": {"nprocPerNode": str(devices), "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
                     "pytorchReplicaSpecs": specs}}


def k8s_pool(stage: str, nodes: int, devices: int, s: dict) -> dict:
    """A Prefect kubernetes work pool's base job template: the flow-run pod (one node's GPUs, the shared
    volume); `{{ ... }}` are Prefect's per-run variables, defined under `variables`."""
    container = _container(s, devices, [])
    del container["command"]  # the image's entrypoint; Prefect passes the flow-run command as `args`
    container.update({"args": "{{ command }}", "env": "{{ env }}", "imagePullPolicy": "IfNotPresent",
                      "image": "{{ image }}"})
    manifest = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "{{ name }}-", "namespace": "{{ namespace }}", "labels": "{{ labels }}"},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 86400,
                 "template": {"spec": {"restartPolicy": "Never", "containers": [container],
                                       "volumes": _volumes(s)}}},
    }
    variables = {"type": "object", "properties": {
        "image": {"type": "string", "default": s["image"]},
        "namespace": {"type": "string", "default": s["namespace"]},
        "name": {"type": "string", "default": f"twinflow-{stage}"},
        "env": {"type": "object", "default": {}},
        "labels": {"type": "object", "default": {}},
        "command": {"type": "string"},
    }}
    return {"job_configuration": {"command": "{{ command }}", "env": "{{ env }}", "labels": "{{ labels }}",
                                  "name": "{{ name }}", "namespace": "{{ namespace }}", "job_manifest": manifest},
            "variables": variables}


def job_manifest_example(template: dict, values: dict | None = None) -> dict:
    """The base job template's manifest with its placeholders filled as Prefect would for one run (for checks)."""
    filled = {"name": "twinflow-run", "namespace": "twinflow", "labels": {"app": "twinflow"},
              "env": [{"name": "PREFECT_API_URL", "value": "http://prefect:4200/api"}],
              "command": ["prefect", "flow-run", "execute"], "image": "registry.internal/twinflow-worker:1",
              **(values or {})}

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and node.startswith("{{ ") and node.endswith(" }}"):
            return filled[node[3:-3]]
        if isinstance(node, str) and "{{ " in node:
            key = node.split("{{ ", 1)[1].split(" }}", 1)[0]
            return node.replace("{{ " + key + " }}", str(filled[key]))
        return node

    return fill(template["job_configuration"]["job_manifest"])


KINDS = {"sbatch": sbatch, "pytorchjob": pytorchjob, "k8s-pool": k8s_pool}


def render(kind: str, params: str | Path = "params.yaml", stage: str = "train", settings: dict | None = None):
    if kind not in KINDS:
        raise ConfigError(f"unknown template {kind!r}; templates: {sorted(KINDS)}")
    unknown = sorted(set(settings or {}) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not a template setting; settings: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **(settings or {})}
    nodes, devices = placement(params, stage)
    return KINDS[kind](stage, nodes, devices, s)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.launch_templates", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--stage", default="train", choices=["pretrain", "train"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        settings = {}
        for item in args.sets:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            settings[key] = int(value) if isinstance(DEFAULTS.get(key), int) else value
        out = render(args.kind, args.params, args.stage, settings)
    except (ConfigError, ValueError) as err:
        print(f"launch_templates: error: {err}", file=sys.stderr)
        return 2
    print(out if isinstance(out, str) else (json.dumps(out, indent=1) if args.kind == "k8s-pool"
                                           else yaml.safe_dump(out, sort_keys=False)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
