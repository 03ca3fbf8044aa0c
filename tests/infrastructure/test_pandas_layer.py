"""AWS's managed AWS SDK for pandas layer: its version number comes from a per-region table for one
release (layers/pandas-managed/versions.json), and its size from a build of that release's pins."""

from __future__ import annotations

import os
import re
import tempfile
from typing import TYPE_CHECKING
from unittest import mock

import pytest

from infrastructure import layers
from infrastructure.stacks import PIPELINE_STACK, build_app

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra


def test_given_the_table_then_the_templates_mapping_holds_every_region_of_it(synthesized: Synthesized) -> None:
    managed = layers.managed_pandas_layer()
    mapping = synthesized.raw_template(PIPELINE_STACK)["Mappings"]["PandasLayerVersions"]
    assert mapping == {region: {"version": str(v)} for region, v in managed.versions.items()}
    # release 3.16.1's table, python3.12 x86_64 (the one row verified so far)
    assert (managed.release, managed.layer, managed.versions["af-south-1"]) == ("3.16.1", "AWSSDKPandas-Python312", 26)


def test_given_a_listed_region_then_its_own_version_and_an_unlisted_one_is_an_error_naming_it() -> None:
    managed = layers.managed_pandas_layer()
    assert managed.version_in("af-south-1") == 26
    with pytest.raises(ValueError, match=r"region 'eu-nowhere-9' .*pandasLayerArn"):
        managed.version_in("eu-nowhere-9")


def test_given_a_region_the_table_lacks_then_synth_fails_naming_it() -> None:
    with (
        mock.patch.dict(os.environ, {"CDK_DEFAULT_ACCOUNT": "123456789012", "CDK_DEFAULT_REGION": "xx-nowhere-1"}),
        tempfile.TemporaryDirectory() as outdir,
        pytest.raises(ValueError, match=r"region 'xx-nowhere-1' in layers/pandas-managed/versions.json"),
    ):
        build_app(outdir=outdir)


def test_given_the_pins_then_the_measured_layer_is_awswranglers_release_and_fits_lambda() -> None:
    pins = layers.PANDAS_MANAGED_REQUIREMENTS.read_text(encoding="utf-8")
    pinned = re.search(r"^awswrangler(?:\[[a-z,]+\])?==(\S+)$", pins, re.MULTILINE)
    assert pinned is not None and pinned.group(1) == layers.managed_pandas_layer().release
    size_mb = layers.managed_pandas_layer_bytes() / 2**20
    assert 50 < size_mb < 250, f"{size_mb:.1f} MB"
