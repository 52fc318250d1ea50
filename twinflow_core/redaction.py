"""One place that hides credentials in text a person or a log will see: URIs with a user:password@ part,
token-like query parameters, and the values of the environment variables that hold secrets.

Every printed error, summary line and logged tracking URI goes through `redact` (flows/cli.py, flows/tracking.py,
flows/commands/run.py); tests/test_security.py plants credentials and greps every output of a run for them.
"""
from __future__ import annotations

import os
import re

MASK = "***"
# Environment variables whose values are secrets wherever they appear (AWS, MLflow basic auth / token, S3 via DVC).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH", "DATABRICKS_TOKEN",
              "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "MLFLOW_FLASK_SERVER_SECRET_KEY")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*)(?::(?P<pw>[^/\s@]*))?@")
_QUERY = re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|password|secret|sig|signature|"
                    r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s\"']+")


def _env_secrets() -> list[str]:
    # short values (e.g. moto's "testing") would mask ordinary words; real keys and passwords are longer
    return sorted({v for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 8}, key=len, reverse=True)


def redact_uri(uri: str) -> str:
    """`https://user:pw@host/x?token=t` -> `https://user:***@host/x?token=***` (a user alone is kept)."""
    def userinfo(m: re.Match) -> str:
        scheme, user, pw = m.group("scheme"), m.group("user"), m.group("pw")
        if pw is not None:
            return f"{scheme}{user}:{MASK}@"
        return f"{scheme}{MASK}@" if _looks_like_token(user) else m.group(0)

    return _QUERY.sub(lambda m: m.group(1) + MASK, _USERINFO.sub(userinfo, uri))


def _looks_like_token(user: str) -> bool:
    """`https://ghp_abc...@host`: a bare long user part is a token, not a name."""
    return len(user) >= 20


def redact(text: str) -> str:
    """`text` with every credential the module knows how to spot replaced by ***."""
    if not text:
        return text
    out = redact_uri(str(text))
    for secret in _env_secrets():
        out = out.replace(secret, MASK)
    return out
