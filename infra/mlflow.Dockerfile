# The team MLflow server: the project's pinned mlflow with what the core image lacks for this setup:
# psycopg 3 (SQLAlchemy 2.1's driver for postgresql://), Flask-WTF (basic-auth) and boto3 (S3 artifacts),
# all at the versions of requirements-lock.txt (used as a constraints file).
FROM python:3.11-slim
WORKDIR /srv
COPY requirements-lock.txt ./
RUN grep -v '^torch==' requirements-lock.txt > constraints.txt \
 && pip install --no-cache-dir -c constraints.txt mlflow psycopg[binary] Flask-WTF boto3
COPY infra/mlflow/entrypoint.sh /usr/local/bin/mlflow-entrypoint
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"
ENTRYPOINT ["mlflow-entrypoint"]
