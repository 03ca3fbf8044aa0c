"""The deployed model travels as a Lambda layer version, pinned into each Lambda version.

Layer content (zip): ``python/pricepipe_model/__init__.py``, ``model.npz`` (the lean artifact) and
``model.json`` (what it is: model name and version, metrics, data window). Lambda puts a layer's
``python/`` on ``sys.path``, so the API function reads its model from the package ``pricepipe_model``
at cold start: no S3 call, no boto3 import on the serving path. Publishing a function version with
a given model layer pins that model to that version, which is what canary and blue-green route
between; a version without the layer answers "no model deployed".
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pricepipe.lean_model import LeanModel

PACKAGE = "pricepipe_model"
ARTIFACT = "model.npz"
METADATA = "model.json"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # same model, same zip bytes, same CodeSha256


@dataclass(frozen=True)
class DeployedModel:
    model: LeanModel
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", ""))


def build_layer_zip(artifact: bytes, metadata: dict[str, Any]) -> bytes:
    """The layer's zip for one model version; ``metadata`` needs at least model_name and model_version."""
    missing = [k for k in ("model_name", "model_version") if k not in metadata]
    if missing:
        raise ValueError(f"model layer metadata lacks {', '.join(missing)}")
    LeanModel.load(artifact)  # refuse to ship something the function could not load
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (
            ("__init__.py", b'"""The deployed price model (see pricepipe.serving.model_layer)."""\n'),
            (ARTIFACT, artifact),
            (METADATA, json.dumps(metadata, sort_keys=True, default=str).encode()),
        ):
            info = zipfile.ZipInfo(f"python/{PACKAGE}/{name}", date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def load_deployed_model(package: str = PACKAGE) -> DeployedModel | None:
    """The model layer on this function's path, or None when the function has no model yet."""
    try:
        folder = resources.files(package)
    except ModuleNotFoundError:
        return None
    artifact, metadata = folder / ARTIFACT, folder / METADATA
    if not artifact.is_file():
        return None
    info = json.loads(metadata.read_text()) if metadata.is_file() else {}
    return DeployedModel(LeanModel.load(artifact.read_bytes()), info)
