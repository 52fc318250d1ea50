-- Beside MLflow's tracking database (POSTGRES_DB): MLflow's basic-auth users and permissions, and Prefect's.
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
