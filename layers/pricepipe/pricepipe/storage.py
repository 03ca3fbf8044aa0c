"""S3 adapter: listing, reading and writing objects, with failures worth retrying made transient
and a missing bucket named as the configuration error it is.

Takes its client as an argument; the endpoint (AWS, LocalStack, the local cloud) is the client's
business, set by the SDK's standard ``AWS_ENDPOINT_URL*`` variables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from pricepipe.errors import BucketNotFound, PricePipeError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "503", "500"}
)


@dataclass(frozen=True)
class ObjectRef:
    """One S3 object as seen at listing time."""

    bucket: str
    key: str
    etag: str
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectRef:
        return cls(bucket=data["bucket"], key=data["key"], etag=data["etag"], size=int(data.get("size", 0)))


class InvalidS3Uri(PricePipeError, ValueError):
    """A location that should be ``s3://bucket/key`` and is not."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``; anything else is refused with the URI named."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise InvalidS3Uri(f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


class ObjectChanged(PricePipeError):
    """The object no longer has the content (ETag) it was listed with."""


def _error_code(exc: Exception) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def _raise_known(exc: Exception, bucket: str, what: str) -> None:
    """Re-raise a missing bucket as :class:`BucketNotFound` and failures worth retrying as
    :class:`TransientError`; anything else is left to the caller to re-raise as it is."""
    code = _error_code(exc)
    if code == "NoSuchBucket":
        raise BucketNotFound(f"S3 bucket {bucket!r} does not exist ({what}): check the deployment's settings") from exc
    unreachable = isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError)
    if unreachable or code in _TRANSIENT_CODES:
        raise TransientError(f"S3 {what}: {exc}") from exc


def list_objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[ObjectRef]:
    """Every object under ``prefix`` (folder markers skipped), paginating as needed."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue
                yield ObjectRef(bucket, item["Key"], item["ETag"].strip('"'), int(item.get("Size", 0)))
    except Exception as exc:
        _raise_known(exc, bucket, f"listing s3://{bucket}/{prefix}")
        raise


def read_object(s3: S3Client, ref: ObjectRef) -> bytes:
    """The object's bytes, provided it still has the listed content (else :class:`ObjectChanged`)."""
    try:
        response = s3.get_object(Bucket=ref.bucket, Key=ref.key, IfMatch=f'"{ref.etag}"')
        return bytes(response["Body"].read())
    except Exception as exc:
        _raise_known(exc, ref.bucket, f"reading s3://{ref.bucket}/{ref.key}")
        if _error_code(exc) in ("PreconditionFailed", "NoSuchKey", "412", "404"):
            raise ObjectChanged(f"s3://{ref.bucket}/{ref.key} changed or vanished since it was listed") from exc
        raise


def put_bytes(s3: S3Client, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    except Exception as exc:
        _raise_known(exc, bucket, f"writing s3://{bucket}/{key}")
        raise
    return key


def put_json(s3: S3Client, bucket: str, key: str, payload: Any) -> str:
    return put_bytes(s3, bucket, key, json.dumps(payload, default=str).encode(), "application/json")


def get_json(s3: S3Client, bucket: str, key: str) -> Any:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:
        _raise_known(exc, bucket, f"reading s3://{bucket}/{key}")
        raise
