#!/usr/bin/env bash
# The team MLflow server: tracking + registry on PostgreSQL, artifacts proxied to S3, basic-auth with its user
# database on PostgreSQL too. Used by infra/docker-compose.yml (image infra/mlflow.Dockerfile) and, unchanged,
# by tests/test_team_servers.py on loopback. Everything comes from the environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql://user:pw@host/mlflow        (psycopg 3: SQLAlchemy 2.1's default)
#   MLFLOW_AUTH_DATABASE_URI      postgresql://user:pw@host/mlflow_auth   (users and permissions)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/mlflow   (+ AWS_* credentials, MLFLOW_S3_ENDPOINT_URL off AWS)
#   MLFLOW_AUTH_ADMIN_PASSWORD    the admin's password, used once to create `admin` in an empty user store
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the auth app's CSRF tokens (the same on every replica)
#   MLFLOW_ALLOWED_HOSTS          host names clients call it by (else MLflow answers 403 "Invalid Host header")
#   MLFLOW_HOST / MLFLOW_PORT     where it listens (0.0.0.0:5000)
#   MLFLOW_DEFAULT_PERMISSION     what a user has on what nobody granted them (READ; see infra/README.md)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS seconds a checked password is cached per worker (default 60; 0 = off, MLflow's
#                                 default, makes every request pay a PBKDF2 check: a registration then takes
#                                 minutes; a changed or revoked password still works on a worker for up to the TTL)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  false unless set: MLflow's job runner (GenAI jobs, which this project
#                                 never submits) is a pool of consumer processes that cost CPU even when idle
# No secret is on the server's command line (`ps` shows it to every local account): the database URIs stay in the
# environment, which `mlflow server` reads itself (MLFLOW_BACKEND_STORE_URI), and in the auth config file (0600).
set -euo pipefail
for var in MLFLOW_BACKEND_STORE_URI MLFLOW_AUTH_DATABASE_URI MLFLOW_ARTIFACTS_DESTINATION \
           MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_ALLOWED_HOSTS; do
    if [ -z "${!var:-}" ]; then
        echo "mlflow entrypoint: error: $var is not set (see infra/mlflow/entrypoint.sh)" >&2
        exit 2
    fi
done
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_BACKEND_STORE_URI   # read by `mlflow server` itself: never on its command line
config="${MLFLOW_AUTH_CONFIG_PATH:-$(mktemp -d)/basic_auth.ini}"
umask 077   # the file holds the auth database's password
cat > "$config" <<INI
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
