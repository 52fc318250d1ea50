# Sourced by the Makefile and .ci/run: keeps every tool offline-quiet and its state inside the repo.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$_root/.prefect}"
export MLFLOW_DISABLE_TELEMETRY=true
# an `mlflow server` started here (the tests', a user's local one) without MLflow's job runner: a pool of consumer
# processes for GenAI jobs this project never submits, which costs CPU even while idle
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export DVC_NO_ANALYTICS=1
export ITERATIVE_DO_NOT_TRACK=1
export GX_ANALYTICS_ENABLED=false
export PYTHONUNBUFFERED=1
# the ephemeral Prefect server can take > 20 s (the default limit) to start on a busy 2-core machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
# dvc.yaml stages run `python -m flows.stages.<stage>`: the project environment must come first on PATH
case ":$PATH:" in *":$_root/.venv/bin:"*) ;; *) export PATH="$_root/.venv/bin:$PATH" ;; esac
unset _root
