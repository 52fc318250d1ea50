-- The Prefect server's own database beside MLflow's in the same PostgreSQL.
CREATE DATABASE prefect;
