"""Object storage (S3-compatible) for a shared catalog, configured only from the standard environment.

Credentials and endpoint come from the variables every AWS SDK reads: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION and AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL (for MinIO, moto, Ceph …). Nothing is ever written into the catalog. pyarrow's
S3 filesystem (images, embedded exports) reads the credentials itself, also from ~/.aws; it does
not read the endpoint variables, so they are passed to it here. DuckDB (the lake's data files)
gets a temporary, in-memory secret built from the same variables.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ocrcat.catalog.sqltext import sql_string

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _endpoint() -> tuple[str | None, str]:
    """(host[:port] or None, scheme) of the S3 endpoint named by the environment."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, "https"
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return parts.netloc, parts.scheme or "https"


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for `s3://bucket/prefix` (or any URL pyarrow knows)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        host, scheme = _endpoint()
        fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=_region())
        return fs, f"{parts.netloc}{parts.path}".rstrip("/")
    return pafs.FileSystem.from_uri(url.rstrip("/"))


def duckdb_secret(con) -> None:
    """Give DuckDB's httpfs the environment's S3 settings as a temporary (never persisted) secret."""
    host, scheme = _endpoint()
    options = ["TYPE s3", f"REGION {sql_string(_region())}"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options += [f"KEY_ID {sql_string(os.environ['AWS_ACCESS_KEY_ID'])}",
                    f"SECRET {sql_string(os.environ.get('AWS_SECRET_ACCESS_KEY', ''))}"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            options.append(f"SESSION_TOKEN {sql_string(os.environ['AWS_SESSION_TOKEN'])}")
    if host:
        # A self-hosted endpoint (MinIO, moto) serves buckets as paths, not as host names.
        options += [f"ENDPOINT {sql_string(host)}", "URL_STYLE 'path'", f"USE_SSL {str(scheme == 'https').lower()}"]
    con.execute(f"CREATE OR REPLACE TEMPORARY SECRET ocrcat_s3 ({', '.join(options)})")


def aws_environment() -> dict[str, str]:
    """The AWS variables of this process, to hand to Ray tasks (their workers do not inherit ours)."""
    return {k: os.environ[k] for k in AWS_VARIABLES if k in os.environ}

