"""Launch templates rendered from the project's settings: an sbatch script (SLURM), a Prefect kubernetes work-pool
base job template, and Kubeflow manifests for multi-node training: a Trainer v2 TrainJob (trainer.kubeflow.org/
v1alpha1, Kubeflow Trainer 2.x) and the v1 PyTorchJob (kubeflow.org/v1, the training operator it replaces).

    python -m flows.launch_templates sbatch     [--params params.yaml] [--stage train] [--set key=value ...]
    python -m flows.launch_templates trainjob   [...]      (YAML on stdout)
    python -m flows.launch_templates pytorchjob [...]      (YAML on stdout)
    python -m flows.launch_templates k8s-pool   [...]      (JSON: `prefect work-pool create --base-job-template`)

Nodes and processes per node come from the stage's trainer section (params.yaml: <stage>.trainer.num_nodes and
devices); image, namespace, volume claim, partition, time limit from --set (defaults below). Every template runs
the stage command exactly as dvc.yaml writes it (`python -m flows.stages.<stage>`, torchrun for a PyTorchJob),
so dvc.lock's `cmd` does not change: the launcher's environment places the ranks (twinflow_core/training/launch.py).
The sbatch script is submitted with `sbatch --wait`, which blocks until the job ends and returns its exit code
(flows/slurm.py: a Prefect task that submits it and reports that code). Every template requests GPUs, so one
rendered for a stage whose trainer.accelerator is `cpu` is refused (it would hold GPUs and train on the CPU).
"""

# Lazy imports: prefect
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from flows.params import load_params
from twinflow_core.errors import ConfigError

DEFAULTS = {
    "image": "registry.internal/twinflow-worker:latest",
    "namespace": "twinflow",
    "claim": "twinflow-work",  # a ReadWriteMany volume: checkout, DVC cache, checkpoints, resume states
    "mount": "/work",
    "workdir": "/work/twinflow",  # the checkout on the shared volume
    "partition": "gpu",
    "time": "24:00:00",
    "cpus_per_task": 8,
    "requeue_signal_seconds": 120,  # SIGUSR1 that long before the time limit: Lightning saves and requeues
    "gpu_resource": "nvidia.com/gpu",
    "master_port": 29500,
    "runtime": "torch-distributed",  # the TrainJob's ClusterTrainingRuntime (Kubeflow Trainer's torch runtime)
    "fs_group": 1000,  # the worker image's non-root user and group (infra/worker.Dockerfile)
}


def placement(params_path: str | Path, stage: str, kind: str | None = None) -> tuple[int, int]:
    """(nodes, processes per node) of `stage` from params.yaml's trainer section; with `kind` (a template, all of
    which request GPUs), a trainer.accelerator of `cpu` is refused."""

    raw = load_params(params_path)
    trainer = (raw.get(stage) or {}).get("trainer") or {}
    nodes, devices = trainer.get("num_nodes", 1), trainer.get("devices", 1)
    if not (isinstance(nodes, int) and isinstance(devices, int) and nodes >= 1 and devices >= 1):
        raise ConfigError(
            f"{params_path}: {stage}.trainer.num_nodes / devices must be integers >= 1, got {nodes!r} / {devices!r}"
        )
    accelerator = trainer.get("accelerator", "cpu")  # TrainerConfig's default
    if kind is not None and accelerator == "cpu":
        raise ConfigError(
            f"{params_path}: {stage}.trainer.accelerator is cpu, but the {kind} template requests "
            f"{devices} GPU(s) per node: choose a GPU trainer first (python -m flows.stages.configure "
            f"trainer=multinode, or trainer=ddp / gpu)"
        )
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
        # in the submit folder: SLURM opens the log before the script runs and creates no folder for it, so a
        # path into outputs/ failed the first job of a fresh clone (slurm-*.out is git-ignored)
        f"#SBATCH --output=slurm-twinflow-{stage}-%j.out",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
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
    return [
        {"name": "work", "persistentVolumeClaim": {"claimName": s["claim"]}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]  # NCCL / dataloader shared memory


def _security(s: dict) -> dict:
    """The pod's securityContext: the image's non-root user, and the shared volume group-owned by its group
    (fsGroup), so that the checkout, DVC cache and resume states on it are writable."""
    return {"runAsNonRoot": True, "runAsUser": s["fs_group"], "runAsGroup": s["fs_group"], "fsGroup": s["fs_group"]}


def trainjob(stage: str, nodes: int, devices: int, s: dict) -> dict:
    """A Kubeflow Trainer v2 TrainJob on the torch runtime, which sets torchrun's PET_NNODES, PET_NPROC_PER_NODE,
    PET_NODE_RANK and PET_MASTER_ADDR/PORT; the shared volume, /dev/shm and the non-root security context go into
    the runtime's pod template through runtimePatches (the v2.2 API: replicated job and container `node`)."""
    pod = {
        "securityContext": _security(s),
        "volumes": _volumes(s),
        "containers": [
            {
                "name": "node",
                "volumeMounts": [{"name": "work", "mountPath": s["mount"]}, {"name": "shm", "mountPath": "/dev/shm"}],
            }
        ],
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": f"twinflow-{stage}", "namespace": s["namespace"]},
        "spec": {
            "runtimeRef": {"name": s["runtime"], "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            # no workingDir in the v2 API: the command changes into the checkout on the shared volume
            "trainer": {
                "image": s["image"],
                "command": ["bash", "-c", f'cd "$TWINFLOW_WORKDIR" && exec torchrun -m flows.stages.{stage}'],
                "numNodes": nodes,
                "numProcPerNode": devices,
                "resourcesPerNode": {"limits": {s["gpu_resource"]: devices}},
                "env": [{"name": "TWINFLOW_WORKDIR", "value": s["workdir"]}],
            },
            "runtimePatches": [
                {
                    "manager": "twinflow.launch-templates",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod}}}}]
                            }
                        }
                    },
                }
            ],
        },
    }


def pytorchjob(stage: str, nodes: int, devices: int, s: dict) -> dict:
    # torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT set by the operator
    command = ["torchrun", "-m", f"flows.stages.{stage}"]

    def replica(n: int) -> dict:
        return {
            "replicas": n,
            "restartPolicy": "OnFailure",
            "template": {
                "spec": {
                    "containers": [_container(s, devices, command)],
                    "volumes": _volumes(s),
                    "securityContext": _security(s),
                }
            },
        }

    specs = {"Master": replica(1)}
    if nodes > 1:
        specs["Worker"] = replica(nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": f"twinflow-{stage}", "namespace": s["namespace"]},
        "spec": {
            "nprocPerNode": str(devices),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": specs,
        },
    }


# The kubernetes worker's own base job template, as Prefect 3.9.1 prints it (`prefect work-pool
# get-default-base-job-template --type kubernetes`, from prefect/server/api/collections_data/views/
# aggregate-worker-metadata.json; the worker is prefect-kubernetes, src/integrations/prefect-kubernetes/
# prefect_kubernetes/worker.py in github.com/PrefectHQ/prefect). Ours keeps every variable and field of it and
# adds the GPUs, the shared volume and the working directory. Two of its rules bind us: the worker refuses a
# manifest whose pod spec lacks `parallelism: 1`, `completions: 1`, `restartPolicy: Never` or whose first
# container is not named `prefect-job` (it also streams the run's output from that container by name).
K8S_POOL_CONTAINER = "prefect-job"


def _pool_variables(stage: str, s: dict) -> dict:
    """The per-run variables (a JSON schema): the kubernetes worker's, with this project's defaults."""

    def var(kind, title, description, default=None, **extra):
        spec = {"title": title, "description": description, **extra}
        spec["type" if not isinstance(kind, list) else "anyOf"] = (
            kind if not isinstance(kind, list) else [{"type": k} for k in kind]
        )
        if default is not None:
            spec["default"] = default
        return spec

    return {
        "type": "object",
        "properties": {
            "name": var("string", "Name", "Prefix of the job's name.", f"twinflow-{stage}"),
            "env": var(
                "object",
                "Environment Variables",
                "Environment of the flow-run container.",
                {},
                additionalProperties={"type": ["string", "null"]},
            ),
            "labels": var("object", "Labels", "Labels of the job.", {}, additionalProperties={"type": "string"}),
            "command": var("string", "Command", "The flow-run command (default: Prefect's)."),
            "namespace": var("string", "Namespace", "Namespace of the job.", s["namespace"]),
            "image": var("string", "Image", "The worker image (infra/worker.Dockerfile).", s["image"]),
            "service_account_name": var("string", "Service Account Name", "Service account of the pod."),
            "image_pull_policy": var(
                "string",
                "Image Pull Policy",
                "When the image is pulled.",
                "IfNotPresent",
                enum=["IfNotPresent", "Always", "Never"],
            ),
            "finished_job_ttl": var("integer", "Finished Job TTL", "Seconds a finished job is kept.", 86400),
            "job_watch_timeout_seconds": var(
                "integer", "Job Watch Timeout Seconds", "Seconds the worker watches the job (none: until it ends)."
            ),
            "pod_watch_timeout_seconds": var(
                "integer", "Pod Watch Timeout Seconds", "Seconds the worker waits for the pod to start.", 600
            ),
            "stream_output": var("boolean", "Stream Output", "Stream the run's output to the worker.", True),
            # a block document reference, as the worker reads it (none: the pod's in-cluster service account)
            "cluster_config": {
                "title": "Cluster Config",
                "description": "A kubernetes-cluster-config block.",
                "allOf": [{"$ref": "#/definitions/KubernetesClusterConfig"}],
            },
            "cpu_request": var("string", "CPU Request", "e.g. 8"),
            "cpu_limit": var("string", "CPU Limit", "e.g. 16"),
            "memory_request": var("string", "Memory Request", "e.g. 64Gi"),
            "memory_limit": var("string", "Memory Limit", "e.g. 128Gi"),
        },
        "definitions": {
            "KubernetesClusterConfig": {
                "title": "KubernetesClusterConfig",
                "type": "object",
                "block_type_slug": "kubernetes-cluster-config",
                "description": "A kubectl config and the context to use of it.",
                "properties": {
                    "config": {"title": "Config", "type": "object"},
                    "context_name": {"title": "Context Name", "type": "string"},
                },
                "required": ["config", "context_name"],
                "secret_fields": [],
                "block_schema_references": {},
            }
        },
    }


def k8s_pool(stage: str, nodes: int, devices: int, s: dict) -> dict:
    """A Prefect kubernetes work pool's base job template: the kubernetes worker's default (above) plus one
    node's GPUs as a fixed limit and the shared volume; `{{ ... }}` are Prefect's per-run variables."""
    container = {
        "name": K8S_POOL_CONTAINER,
        "env": "{{ env }}",
        "image": "{{ image }}",
        "imagePullPolicy": "{{ image_pull_policy }}",
        "args": "{{ command }}",  # the image's entrypoint runs Prefect's flow-run command
        "workingDir": s["workdir"],
        "resources": {
            "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}", s["gpu_resource"]: devices},
            "requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"},
        },
        "volumeMounts": [{"name": "work", "mountPath": s["mount"]}, {"name": "shm", "mountPath": "/dev/shm"}],
    }
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": "{{ labels }}", "namespace": "{{ namespace }}", "generateName": "{{ name }}-"},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            # parallelism/completions sit in the pod spec because the worker demands them there (see above);
            # Kubernetes drops them with a warning
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "containers": [container],
                    "volumes": _volumes(s),
                }
            },
        },
    }
    configuration = {key: f"{{{{ {key} }}}}" for key in ("command", "env", "labels", "name", "namespace")}
    configuration["job_manifest"] = manifest
    configuration.update(
        {
            key: f"{{{{ {key} }}}}"
            for key in ("cluster_config", "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output")
        }
    )
    return {"job_configuration": configuration, "variables": _pool_variables(stage, s)}


def job_manifest_example(template: dict, values: dict | None = None) -> dict:
    """The base job template's manifest filled as a worker fills it for one run: the variables' defaults, then
    `values`, through Prefect's own templating (a placeholder without a value drops its key)."""
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    filled = {
        **defaults,
        "labels": {"app": "twinflow"},
        "env": [{"name": "PREFECT_API_URL", "value": "http://prefect:4200/api"}],
        "command": ["prefect", "flow-run", "execute"],
        "image": "registry.internal/twinflow-worker:1",
        **(values or {}),
    }
    return apply_values(template["job_configuration"]["job_manifest"], filled)


KINDS = {"sbatch": sbatch, "trainjob": trainjob, "pytorchjob": pytorchjob, "k8s-pool": k8s_pool}


def render(kind: str, params: str | Path = "params.yaml", stage: str = "train", settings: dict | None = None):
    if kind not in KINDS:
        raise ConfigError(f"unknown template {kind!r}; templates: {sorted(KINDS)}")
    unknown = sorted(set(settings or {}) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not a template setting; settings: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **(settings or {})}
    nodes, devices = placement(params, stage, kind)
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
    print(
        out
        if isinstance(out, str)
        else (json.dumps(out, indent=1) if args.kind == "k8s-pool" else yaml.safe_dump(out, sort_keys=False)),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
