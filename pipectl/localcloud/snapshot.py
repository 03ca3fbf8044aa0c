"""Persistence for the local cloud's S3: moto keeps objects in memory, so ``local down`` saves them
under ``<state dir>/s3/<bucket>/<key>`` and ``local up`` puts them back."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def save(s3: S3Client, buckets: list[str], folder: Path) -> int:
    """Write every object of ``buckets`` under ``folder`` (replacing what was there)."""
    count = 0
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = tmp / bucket / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                count += 1
    shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return count


def restore(s3: S3Client, buckets: list[str], folder: Path) -> int:
    count = 0
    for bucket in buckets:
        root = folder / bucket
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file():
                s3.put_object(Bucket=bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes())
                count += 1
    return count
