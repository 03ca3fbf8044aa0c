"""How an S3 URI splits: one rule for every caller."""

from __future__ import annotations

import pytest

from pricepipe import storage
from pricepipe.errors import PricePipeError


def test_an_s3_uri_splits_into_bucket_and_the_whole_key() -> None:
    assert storage.split_uri("s3://art/mlflow/1/serving/model.npz") == ("art", "mlflow/1/serving/model.npz")


@pytest.mark.parametrize("uri", ["art/key", "s3://art", "s3://art/", "s3:///key", "file:///tmp/x", ""])
def test_anything_but_bucket_and_key_is_refused_with_the_uri_named(uri: str) -> None:
    with pytest.raises(storage.InvalidS3Uri, match="expected s3://bucket/key") as raised:
        storage.split_uri(uri)
    assert repr(uri) in str(raised.value)
    assert isinstance(raised.value, PricePipeError) and isinstance(raised.value, ValueError)
