"""The deployment files, checked offline: the compose file against the compose spec (check-jsonschema's vendored
schema), the rendered Kubernetes objects against the Kubernetes 1.30 schemas (kubernetes-validate, strict), the
PyTorchJob and the Trainer v2 TrainJob against the fields of the Kubeflow CRDs they use (infra/schemas/*.subset.json),
refused for a CPU trainer (they request GPUs), the sbatch
script's #SBATCH lines against sbatch's options and `bash -n`. Each check is shown to fail on a misspelled key.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import launch_templates as lt
from twinflow_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
K8S = "1.30.0"
# long options of sbatch (SLURM 23.02 `man sbatch`) that a script of ours may use
SBATCH_OPTIONS = {
    "account",
    "array",
    "chdir",
    "constraint",
    "cpus-per-task",
    "dependency",
    "error",
    "exclusive",
    "gpus",
    "gpus-per-node",
    "gpus-per-task",
    "gres",
    "job-name",
    "mail-type",
    "mail-user",
    "mem",
    "mem-per-cpu",
    "mem-per-gpu",
    "nodes",
    "ntasks",
    "ntasks-per-node",
    "open-mode",
    "output",
    "partition",
    "qos",
    "requeue",
    "no-requeue",
    "signal",
    "time",
    "wait",
}
VALUE_PATTERNS = {
    "nodes": r"[1-9]\d*",
    "ntasks-per-node": r"[1-9]\d*",
    "gpus-per-node": r"[1-9]\d*",
    "cpus-per-task": r"[1-9]\d*",
    "time": r"(\d+-)?\d+:\d\d:\d\d",
    "signal": r"(B:)?SIGUSR[12]@\d+",
    "open-mode": r"append|truncate",
}


def _params(tmp_path: Path, nodes: int, devices: int, accelerator: str = "gpu") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump({"train": {"trainer": {"num_nodes": nodes, "devices": devices, "accelerator": accelerator}}})
    )
    return path


def check_sbatch(script: str, where: Path) -> None:
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
            assert m, f"not an sbatch option line: {line!r}"
            name, value = m.groups()
            assert name in SBATCH_OPTIONS, f"unknown sbatch option --{name}"
            if name in VALUE_PATTERNS:
                assert value and re.fullmatch(VALUE_PATTERNS[name], value), f"--{name}={value}"
    where.write_text(script)
    done = subprocess.run(["bash", "-n", str(where)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def check_k8s(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S, strict=True)


def check_pytorchjob(job: dict) -> None:
    import jsonschema

    schema = json.loads((ROOT / "infra" / "schemas" / "pytorchjob-v1.subset.json").read_text())
    jsonschema.validate(job, schema)
    for name, replica in job["spec"]["pytorchReplicaSpecs"].items():
        check_k8s(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"t-{name.lower()}"},
                "template": replica["template"],
            }
        )


def test_sbatch_from_params_is_valid_and_a_misspelled_option_fails(tmp_path):
    script = lt.render("sbatch", _params(tmp_path, 4, 8), "train", {"time": "12:00:00"})
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --requeue",
        "#SBATCH --time=12:00:00",
    ):
        assert line in script.splitlines()
    assert re.search(r"^#SBATCH --signal=SIGUSR1@\d+$", script, re.M)
    assert 'srun --kill-on-bad-exit=1 python -m flows.stages.train "$@"' in script  # dvc.yaml's command
    # SLURM creates no folder for the job's log: it must go where the job is submitted (a fresh clone's root)
    output = re.search(r"^#SBATCH --output=(\S+)$", script, re.M).group(1)
    assert "/" not in output and output.startswith("slurm-")
    assert subprocess.run(["git", "check-ignore", "-q", output.replace("%j", "17")], cwd=ROOT).returncode == 0
    check_sbatch(script, tmp_path / "ok.sbatch")
    for bad in (
        script.replace("--ntasks-per-node", "--ntask-per-node"),
        script.replace("=SIGUSR1@", "=USR1@"),
        script.replace("--nodes=4", "--nodes=four"),
    ):
        with pytest.raises(AssertionError):
            check_sbatch(bad, tmp_path / "bad.sbatch")
    with pytest.raises(AssertionError):
        check_sbatch(script + "if [ 1 ]; then\n", tmp_path / "bad.sbatch")


def check_trainjob(job: dict) -> None:
    import jsonschema

    schema = json.loads((ROOT / "infra" / "schemas" / "trainjob-v1alpha1.subset.json").read_text())
    jsonschema.validate(job, schema)
    for patch in job["spec"].get("runtimePatches", []):
        for replicated in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            pod = copy.deepcopy(replicated["template"]["spec"]["template"]["spec"])
            for container in pod.get("containers", []):
                container.setdefault("image", "patched-by-the-runtime")
            check_k8s(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t-node"}, "template": {"spec": pod}}
            )


def test_trainjob_v2_is_valid_non_root_and_a_misspelled_key_fails(tmp_path):
    job = lt.render("trainjob", _params(tmp_path, 3, 8), settings={"claim": "team-volume"})
    check_trainjob(job)
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["resourcesPerNode"]["limits"]) == (
        3,
        8,
        {"nvidia.com/gpu": 8},
    )
    assert trainer["command"][-1].endswith("exec torchrun -m flows.stages.train")  # dvc.yaml's stage, via torchrun
    assert job["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"
    ]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "team-volume"}} in pod["volumes"]
    import jsonschema
    from kubernetes_validate import ValidationError

    patch = (
        "spec",
        "runtimePatches",
        0,
        "trainingRuntimeSpec",
        "template",
        "spec",
        "replicatedJobs",
        0,
        "template",
        "spec",
        "template",
        "spec",
    )

    def rename(path, old, new):
        def mutate(j):
            node = j
            for key in path:
                node = node[key]
            node[new] = node.pop(old)

        return mutate

    for mutate in (
        rename(("spec",), "runtimeRef", "runtimeref"),
        rename(("spec", "trainer"), "numNodes", "nodes"),
        rename(("spec", "trainer"), "numProcPerNode", "nprocPerNode"),
        rename(patch, "securityContext", "securitycontext"),
        rename(patch + ("securityContext",), "fsGroup", "fsgroup"),
        rename(patch + ("containers", 0), "volumeMounts", "volumeMount"),
        lambda j: j.__setitem__("apiVersion", "kubeflow.org/v1"),
    ):
        bad = copy.deepcopy(job)
        mutate(bad)
        with pytest.raises((jsonschema.ValidationError, ValidationError)):
            check_trainjob(bad)
    done = subprocess.run(
        [sys.executable, "-m", "flows.launch_templates", "trainjob", "--params", str(_params(tmp_path, 1, 2))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    check_trainjob(yaml.safe_load(done.stdout))


def test_templates_that_request_gpus_refuse_a_cpu_trainer(tmp_path):
    """params.yaml's default trainer is `cpu`: a rendered job would hold GPUs and train on the CPU."""
    cpu = _params(tmp_path, 2, 8, accelerator="cpu")
    for kind in ("sbatch", "trainjob", "pytorchjob", "k8s-pool"):
        with pytest.raises(ConfigError, match=f"accelerator is cpu, but the {kind} template requests 8 GPU"):
            lt.render(kind, cpu)
        done = subprocess.run(
            [sys.executable, "-m", "flows.launch_templates", kind, "--params", str(cpu)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and not done.stdout and len(done.stderr.splitlines()) == 1, done.stderr
    default = subprocess.run(
        [sys.executable, "-m", "flows.launch_templates", "sbatch"], cwd=ROOT, capture_output=True, text=True
    )
    assert default.returncode == 2 and "train.trainer.accelerator is cpu" in default.stderr


def test_pytorchjob_is_valid_and_a_misspelled_key_fails(tmp_path):
    job = lt.render("pytorchjob", _params(tmp_path, 3, 8))
    check_pytorchjob(job)
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"], job["spec"]["nprocPerNode"]) == (1, 2, "8")
    container = specs["Worker"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"] == ["torchrun", "-m", "flows.stages.train"]
    import jsonschema
    from kubernetes_validate import ValidationError

    mutations = [
        lambda j: j["spec"].__setitem__("nprocPerNod", j["spec"].pop("nprocPerNode")),
        lambda j: j["spec"]["pytorchReplicaSpecs"].__setitem__(
            "Workers", j["spec"]["pytorchReplicaSpecs"].pop("Worker")
        ),
        lambda j: j["spec"]["runPolicy"].__setitem__("cleanPodPolicy", "none"),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].__setitem__(
            "volumeMount", []
        ),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"].__setitem__("volume", []),
    ]
    for mutate in mutations:
        bad = copy.deepcopy(job)
        mutate(bad)
        with pytest.raises((jsonschema.ValidationError, ValidationError)):
            check_pytorchjob(bad)
    one = lt.render("pytorchjob", _params(tmp_path, 1, 2))
    assert "Worker" not in one["spec"]["pytorchReplicaSpecs"]
    check_pytorchjob(one)


def prefect_kubernetes_default() -> dict:
    """The kubernetes worker's default base job template as Prefect 3.9.1 itself serves it (what
    `prefect work-pool get-default-base-job-template --type kubernetes` prints, offline)."""
    import prefect

    metadata = Path(prefect.__file__).parent / "server/api/collections_data/views/aggregate-worker-metadata.json"
    workers = json.loads(metadata.read_text())["prefect-kubernetes"]
    return next(w for w in workers.values() if w["type"] == "kubernetes")["default_base_job_configuration"]


def _paths(node, prefix=""):
    """Every key path of a JSON tree (list items by position): what a template must keep of the default."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}/{key}"
            yield from _paths(value, f"{prefix}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, f"{prefix}/{i}")


def check_pool_template(template: dict) -> None:
    """Ours against the default: every variable, job-configuration key and manifest field of it kept (and each
    placeholder of the default still a placeholder), only declared variables used, the values the worker
    demands, and the filled manifest valid for Kubernetes (strict) apart from the two pod-spec keys the worker
    demands and Kubernetes drops."""
    default = prefect_kubernetes_default()
    ours_vars, default_vars = template["variables"]["properties"], default["variables"]["properties"]
    assert set(default_vars) <= set(ours_vars), f"variables dropped: {sorted(set(default_vars) - set(ours_vars))}"

    def kinds(spec: dict) -> set:
        return {spec.get("type")} | {
            a.get("type") or a.get("$ref") for a in spec.get("anyOf", []) + spec.get("allOf", [])
        } - {None}

    for name, spec in default_vars.items():
        assert kinds(spec) & kinds(ours_vars[name]), f"variable {name}: type changed"
    for name, definition in default["variables"].get("definitions", {}).items():
        ours = template["variables"].get("definitions", {}).get(name, {})
        assert (ours.get("block_type_slug"), ours.get("required")) == (
            definition.get("block_type_slug"),
            definition.get("required"),
        ), f"definition {name} differs"
    missing = sorted(set(_paths(default["job_configuration"])) - set(_paths(template["job_configuration"])))
    assert not missing, f"fields of the default missing: {missing}"

    def at(tree, path):
        for key in path.strip("/").split("/"):
            tree = tree[int(key)] if isinstance(tree, list) else tree[key]
        return tree

    for path in _paths(default["job_configuration"]):
        value = at(default["job_configuration"], path)
        if isinstance(value, str) and value.startswith("{{"):
            assert at(template["job_configuration"], path) == value, f"{path}: placeholder {value} replaced"
    declared = set(ours_vars)
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"], pod["containers"][0]["name"]) == (
        1,
        1,
        "Never",
        "prefect-job",
    ), "values the kubernetes worker demands"
    manifest = lt.job_manifest_example(template)
    for key in ("parallelism", "completions"):
        manifest["spec"]["template"]["spec"].pop(key)
    check_k8s(manifest)


def test_kubernetes_work_pool_template_keeps_prefects_default_and_a_misspelled_key_fails(tmp_path):
    template = lt.render("k8s-pool", _params(tmp_path, 1, 4), settings={"claim": "team-volume"})
    check_pool_template(template)
    manifest = lt.job_manifest_example(template, {"cpu_limit": "16", "memory_limit": "128Gi"})
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4, "cpu": "16", "memory": "128Gi"}
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "team-volume"}} in pod["volumes"]
    assert {"name": "work", "mountPath": "/work"} in pod["containers"][0]["volumeMounts"]
    assert manifest["metadata"]["generateName"] == "twinflow-train-"
    from kubernetes_validate import ValidationError

    spec = ("job_configuration", "job_manifest", "spec")
    pod_path = spec + ("template", "spec")
    container = pod_path + ("containers", 0)

    def rename(path, old, new):
        def mutate(t):
            node = t
            for key in path:
                node = node[key]
            node[new] = node.pop(old)

        return mutate

    mutations = [  # a misspelled key: a Kubernetes field, a field of the default, a variable, a worker rule
        rename(pod_path, "restartPolicy", "restartpolicy"),
        rename(spec, "backoffLimit", "backoffLimits"),
        rename(container + ("resources",), "limits", "limit"),
        rename(container, "volumeMounts", "volumeMount"),
        rename(spec, "ttlSecondsAfterFinished", "ttlSecondAfterFinished"),
        rename(("job_configuration",), "stream_output", "stream_outputs"),
        rename(("variables", "properties"), "service_account_name", "service_acount_name"),
        rename(("variables", "definitions"), "KubernetesClusterConfig", "KubernetesClusterConf"),
        lambda t: t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0].__setitem__(
            "name", "pytorch"
        ),
    ]
    for mutate in mutations:
        bad = copy.deepcopy(template)
        mutate(bad)
        with pytest.raises((AssertionError, ValidationError)):
            check_pool_template(bad)
    done = subprocess.run(
        [sys.executable, "-m", "flows.launch_templates", "k8s-pool", "--params", str(_params(tmp_path, 1, 8))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    check_pool_template(json.loads(done.stdout))


def test_render_refuses_unknown_settings_and_bad_placement(tmp_path):
    with pytest.raises(ConfigError, match="--set imag: not a template setting"):
        lt.render("sbatch", _params(tmp_path, 1, 1), settings={"imag": "x"})
    with pytest.raises(ConfigError, match="num_nodes / devices must be integers"):
        lt.render("sbatch", _params(tmp_path, 0, 1))
    done = subprocess.run(
        [sys.executable, "-m", "flows.launch_templates", "pytorchjob", "--params", str(_params(tmp_path, 2, 2))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    check_pytorchjob(yaml.safe_load(done.stdout))


def _compose_errors(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=120
    )


def test_compose_file_matches_the_compose_spec_and_a_misspelled_key_fails(tmp_path):
    source = ROOT / "infra" / "docker-compose.yml"
    ok = _compose_errors(source)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    compose = yaml.safe_load(source.read_text())
    # what the services need: auth with the admin password from the environment, allowed hosts,
    # PostgreSQL for MLflow, its auth store and Prefect, health checks everywhere
    mlflow = compose["services"]["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql://")
    assert "${MLFLOW_AUTH_ADMIN_PASSWORD" in mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert "mlflow:5000" in mlflow["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert compose["services"]["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    assert all("healthcheck" in s for s in compose["services"].values())
    bad = source.read_text().replace(
        '    healthcheck:\n      test: ["CMD-SHELL"', '    healtcheck:\n      test: ["CMD-SHELL"'
    )
    assert bad != source.read_text()
    (tmp_path / "bad.yml").write_text(bad)
    assert _compose_errors(tmp_path / "bad.yml").returncode != 0


def test_images_and_team_deployments_do_not_depend_on_the_deployers_machine(tmp_path):
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".dvc/cache", "mlflow.db", ".git"} <= set(ignore)
    worker = (ROOT / "infra" / "worker.Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements-lock.txt" in worker and "COPY . ." not in worker
    team = yaml.safe_load((ROOT / "infra" / "prefect.team.yaml").read_text())
    steps = [next(iter(s)) for s in team["pull"]]
    assert steps[0] == "prefect.deployments.steps.git_clone" and "$PWD" not in json.dumps(team)
    # the MLflow entrypoint refuses to start without its secrets, naming the first one missing
    done = subprocess.run(
        ["bash", str(ROOT / "infra" / "mlflow" / "entrypoint.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and "MLFLOW_BACKEND_STORE_URI is not set" in done.stderr
