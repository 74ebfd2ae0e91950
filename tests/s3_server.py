"""A real S3 server on loopback for the S3 store's tests: moto in server mode.

::

    with moto_s3() as endpoint:
        env = s3_env(endpoint, make_bucket(endpoint))      # for the CLI and ``modelport serve``
        S3Store(f"s3://{bucket}/team", endpoint_url=endpoint, client=s3_client(endpoint))
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No instance-metadata lookups (a second of timeouts each) when credentials are missing.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    # One log line per request would bury a failing test's own output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket of its own for one test."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_env(endpoint: str, bucket: str, prefix: str = "team") -> dict[str, str]:
    """What a user sets to keep a registry's files in ``s3://bucket/prefix``."""
    return {
        "MODELPORT_STORE_URL": f"s3://{bucket}/{prefix}",
        "MODELPORT_S3_ENDPOINT_URL": endpoint,
        **CREDENTIALS,
    }


def object_keys(endpoint: str, bucket: str) -> list[str]:
    response = s3_client(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def multipart_uploads(endpoint: str, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = (
        s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )
    return uploads
