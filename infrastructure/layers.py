"""Lambda layer contents for python3.12 x86_64, built on this machine without Docker.

Two kinds of layer:

* a requirements layer: ``pip install --platform manylinux... --only-binary=:all: --target`` of a
  pinned requirements file, run by CDK's *local bundling* hook so ``cdk synth`` never calls Docker.
  The pip result is cached under ``build/layers/<key>/`` (key = requirements content + pip
  arguments + what is stripped), so the many synths of a test run install once and need no network
  after the first;
* a package layer: a plain copy of a pure-Python package (the shared ``pricepipe`` package), staged
  under ``build/layers/`` so its asset hash is the hash of exactly what ships.

Either way the zip layout is ``python/<package>/...``, which Lambda puts on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

from infrastructure.catalog import LAMBDA_RUNTIME, ROOT

BUILD_DIR = ROOT / "build" / "layers"
PYTHON_VERSION = LAMBDA_RUNTIME.removeprefix("python")  # "3.12"
# manylinux2014 alone makes pip settle for old releases whose newer wheels only carry
# manylinux_2_28+ tags; Lambda's Amazon Linux 2023 has glibc 2.34, so every tag up to it is safe.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
# Only used if local bundling declines, which it never does here: the same build inside SAM's image.
DOCKER_IMAGE = f"public.ecr.aws/sam/build-{LAMBDA_RUNTIME}"
# Bump when the way a layer directory is laid out changes, so cached builds are not reused.
LAYOUT_REVISION = "2"
# Never shipped in our layers: the Lambda runtime already has the AWS SDK, and the AWS-managed
# "AWS SDK for pandas" layer has pandas, numpy and pyarrow (which pgpq pulls in): shipping them
# twice would break the 250 MB unzipped limit.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
PANDAS_LAYER_PROVIDED = ("pandas", "numpy", "pyarrow")
_JUNK_DIRS = frozenset({"__pycache__"})
_JUNK_SUFFIXES = (".pyc", ".pyo")


def pip_arguments(requirements: Path, target: Path) -> list[str]:
    """The ``pip install`` command line that builds a layer's ``python/`` directory."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return [
        "install",
        *platforms,
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--no-compile",
        "--no-input",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]


def requirements_key(requirements: Path, excluded: Sequence[str]) -> str:
    """Identity of a requirements layer: what pip is asked for, how, and what is taken out after."""
    digest = hashlib.sha256()
    digest.update(requirements.read_bytes())
    digest.update("\0".join(pip_arguments(Path("requirements.txt"), Path("target"))).encode())
    digest.update("\0".join(sorted(_normalise(n) for n in excluded)).encode())
    digest.update(LAYOUT_REVISION.encode())
    return digest.hexdigest()


@jsii.implements(cdk.ILocalBundling)
class PipLayerBundling:
    """CDK local bundling: fill the asset's output directory from the cached pip build."""

    def __init__(self, requirements: Path, excluded: Sequence[str], cache_root: Path = BUILD_DIR) -> None:
        self.requirements = requirements
        self.excluded = tuple(excluded)
        self.cache_root = cache_root

    # jsii calls back with the bundling options as one struct, not as keyword arguments.
    def try_bundle(self, output_dir: str, options: cdk.BundlingOptions) -> bool:
        built = build_requirements_layer(self.requirements, self.excluded, self.cache_root)
        _link_tree(built / "python", Path(output_dir) / "python")
        return True


def build_requirements_layer(requirements: Path, excluded: Sequence[str], cache_root: Path = BUILD_DIR) -> Path:
    """The cached layer directory for these requirements, installing it first if needed."""
    key = requirements_key(requirements, excluded)
    final = cache_root / key
    if (final / "python").is_dir():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=cache_root))
    try:
        target = staging / "python"
        command = [sys.executable, "-m", "pip", *pip_arguments(requirements, target)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"building the layer for {requirements.name} failed (pip exit {result.returncode}):\n"
                f"{' '.join(command)}\n{result.stderr.strip() or result.stdout.strip()}"
            )
        remove_distributions(target, excluded)
        _strip(target)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def requirements_layer_code(
    requirements: Path, excluded: Sequence[str] = RUNTIME_PROVIDED, cache_root: Path = BUILD_DIR
) -> lambda_.Code:
    """Layer code for a pinned requirements file, bundled locally (Docker only as a fallback)."""
    key = requirements_key(requirements, excluded)
    removals = " ".join(
        f"{name} {name}-*.dist-info {name}.libs" for name in sorted({_normalise(n).replace("-", "_") for n in excluded})
    )
    docker_command = (
        f"pip install --only-binary=:all: --no-compile -r /asset-input/{requirements.name} -t /asset-output/python"
        f" && cd /asset-output/python && rm -rf {removals}"
    )
    return lambda_.Code.from_asset(
        str(requirements.parent),
        # The content hash of the requirements file (plus pip arguments), not of the folder: an
        # unchanged file never rebundles, and other files next to it do not invalidate this layer.
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=key,
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(DOCKER_IMAGE),
            command=["bash", "-c", docker_command],
            local=PipLayerBundling(requirements, excluded, cache_root),  # type: ignore[arg-type]
        ),
    )


def stage_package_layer(package_dir: Path, cache_root: Path = BUILD_DIR) -> Path:
    """Copy a pure-Python package to ``<cache_root>/<name>-<hash>/python/<name>``; return that root."""
    files = sorted(_package_files(package_dir))
    digest = hashlib.sha256(LAYOUT_REVISION.encode())
    for path in files:
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    final = cache_root / f"{package_dir.name}-{digest.hexdigest()[:16]}"
    if (final / "python" / package_dir.name).is_dir():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package_dir.name}-", dir=cache_root))
    try:
        for path in files:
            destination = staging / "python" / package_dir.name / path.relative_to(package_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def package_layer_code(package_dir: Path) -> lambda_.Code:
    """Layer code for a pure-Python package: no pip, just its files under ``python/``."""
    return lambda_.Code.from_asset(str(stage_package_layer(package_dir)))


def remove_distributions(site: Path, names: Iterable[str]) -> list[str]:
    """Delete installed distributions (by their RECORD) from a ``--target`` directory; return their names."""
    wanted = {_normalise(n) for n in names}
    removed = []
    for dist_info in sorted(site.glob("*.dist-info")):
        name = _distribution_name(dist_info)
        if name not in wanted:
            continue
        record = dist_info / "RECORD"
        touched: set[Path] = set()
        if record.is_file():
            for line in record.read_text(encoding="utf-8").splitlines():
                relative = line.split(",", 1)[0]
                if not relative:
                    continue
                path = (site / relative).resolve()
                if site.resolve() not in path.parents:
                    continue  # RECORD may list scripts outside the target (../../bin); leave them
                if path.is_file() or path.is_symlink():
                    path.unlink()
                touched.add(path.parent)
        shutil.rmtree(dist_info, ignore_errors=True)
        for directory in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_dirs(directory, stop=site.resolve())
        removed.append(name)
    return removed


def _distribution_name(dist_info: Path) -> str:
    metadata = dist_info / "METADATA"
    if metadata.is_file():
        for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Name:"):
                return _normalise(line.split(":", 1)[1].strip())
            if not line.strip():
                break
    return _normalise(dist_info.name.rsplit("-", 1)[0])


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def _strip(site: Path) -> None:
    """Drop what the runtime never reads: bytecode caches, console scripts, packages' own test suites."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and (path.name in _JUNK_DIRS or (path.name == "tests" and path.parent.parent == site)):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in _JUNK_SUFFIXES:
            path.unlink()


def _package_files(package_dir: Path) -> Iterable[Path]:
    for path in package_dir.rglob("*"):
        if path.is_file() and not _JUNK_DIRS.intersection(path.parts) and path.suffix not in _JUNK_SUFFIXES:
            yield path


def _publish(staging: Path, final: Path) -> None:
    """Move a finished build into place atomically; a concurrent builder that won keeps its copy."""
    try:
        os.replace(staging, final)
    except OSError:
        if not final.is_dir():
            raise


def _link_tree(source: Path, destination: Path) -> None:
    """Hard-link the cached tree into the asset directory (a copy where links are not possible)."""

    def link_or_copy(src: str, dst: str) -> object:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    shutil.copytree(source, destination, copy_function=link_or_copy, dirs_exist_ok=True)
