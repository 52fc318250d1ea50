"""One place that hides credentials in text a person or a log will see: URIs with a user:password@ part,
token-like query parameters, and the values of the environment variables that hold secrets.

Every printed error, summary line, log record of the flow (flows/pipeline.py installs `RedactingFilter` on
Prefect's handlers), experiment-ref commit message, MLflow param and tag, and logged tracking URI goes through
`redact`. What is recorded as given (an override or params.yaml value, written into the run's params.yaml and git
ref; `twinflow run --tracking-uri`, a Prefect flow-run parameter) cannot be masked without changing its meaning,
so a credential there is refused up front: `credential_in` says which kind it is (flows/params.py).
tests/test_security.py plants credentials and greps every output of a run for them.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
# Environment variables whose values are secrets wherever they appear (AWS, MLflow basic auth / token, S3 via DVC).
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "DATABRICKS_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*)(?::(?P<pw>[^/\s@]*))?@")
_QUERY = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|apikey|password|secret|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s\"']+"
)


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


# Config keys whose value is a secret whatever it looks like (s3fs storage_options: key/secret/token, ...)
SECRET_NAMES = (
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "access_key",
    "secret_key",
    "api_key",
    "session_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "client_secret",
)


def credential_in(text, name: str = "") -> str | None:
    """What credential `text` carries, in words ("a password in a URI", "a token in a URI's query", "the value of
    $AWS_SECRET_ACCESS_KEY", "a secret (the key 'secret')"), or None: the things `redact` would mask, and any
    non-empty value of a key named like a secret (`name`, dotted: its last part counts)."""
    if not isinstance(text, str) or not text:
        return None
    leaf = re.split(r"[.\[]", name)[-1].lower() if name else ""
    if leaf in SECRET_NAMES:
        return f"a secret (the key {leaf!r})"
    for m in _USERINFO.finditer(text):
        if m.group("pw") is not None:
            return "a password in a URI (user:password@)"
        if _looks_like_token(m.group("user")):
            return "a token in a URI (token@host)"
    if _QUERY.search(text):
        return "a token in a URI's query (token=, signature=, ...)"
    for key in SECRET_ENV:
        value = os.environ.get(key, "")
        if len(value) >= 8 and value in text:
            return f"the value of ${key}"
    return None


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through `redact` (its message, then args merged in), so a handler
    it sits on (a console, a file, Prefect's API handler) never receives a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's own business
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
