# A Prefect process worker for the TwinFlow pipeline: the environment from the lock (as `make`), no code.
# Each flow run clones the code by git (the pull step of infra/prefect.team.yaml) into its own folder, so
# the image does not change when the code does and two runs never share a checkout.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/twinflow
COPY requirements-lock.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements-lock.txt
# uid and gid 1000: the runAsUser / fsGroup of the rendered Kubeflow templates (flows/launch_templates.py)
RUN useradd --uid 1000 --user-group --create-home worker && mkdir -p /runs && chown worker /runs
USER worker
WORKDIR /runs
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['PREFECT_API_URL'] + '/health', timeout=8)"
CMD ["prefect", "worker", "start", "--pool", "twinflow-team", "--type", "process"]
