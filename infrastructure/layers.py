"""Lambda layer contents for python3.12 x86_64, built on this machine without Docker.

Two kinds of layer:

* a requirements layer: ``pip install --platform manylinux... --only-binary=:all: --target`` of a
  pinned requirements file, run by CDK's *local bundling* hook so ``cdk synth`` never calls Docker.
  The pip result is cached under ``build/layers/<key>/`` (key = requirements content + pip
  arguments + what is stripped + the bytecode it ships), so the many synths of a test run install
  once and need no network after the first;
* a package layer: a plain copy of a pure-Python package (the shared ``pricepipe`` package), staged
  under ``build/layers/`` so its asset hash is the hash of exactly what ships.

Either way the zip layout is ``python/<package>/...``, which Lambda puts on ``sys.path``.

Both kinds ship **compiled bytecode** (``__pycache__/*.cpython-312.pyc``, unchecked-hash): ``/opt``
is read-only in Lambda, so a layer without it makes every cold start compile every module it
imports (measured for the serving function: 2.6 s to the first answer instead of 1.2 s). The .pyc
must come from the runtime's own Python minor version, so a CPython 3.12 is looked for on this
machine (:func:`bytecode_interpreter`); without one the layers ship sources only and the stacks say
so with a synth warning.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
LAYOUT_REVISION = "3"
# Where Lambda mounts a layer's python/ folder: the path compiled code objects name as their file,
# so tracebacks in CloudWatch point at /opt/python/... and the bytecode does not depend on this
# machine's build directory.
RUNTIME_LAYER_ROOT = "/opt/python"
# Overrides the search for a CPython of the runtime's version (a path to its executable).
BYTECODE_PYTHON_ENV = "PRICEPIPE_LAYER_PYTHON"
Auto = Literal["auto"]
# Never shipped in our layers: the Lambda runtime already has the AWS SDK, and the AWS-managed
# "AWS SDK for pandas" layer has pandas, numpy and pyarrow (which pgpq pulls in): shipping them
# twice would break the 250 MB unzipped limit.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
PANDAS_LAYER_PROVIDED = ("pandas", "numpy", "pyarrow")
# That managed layer: its version number in each region for one release (versions.json), and pins of
# what it ships (requirements.txt), from which its size is measured.
PANDAS_MANAGED_DIR = ROOT / "layers" / "pandas-managed"
PANDAS_MANAGED_REQUIREMENTS = PANDAS_MANAGED_DIR / "requirements.txt"


@dataclass(frozen=True)
class ManagedPandasLayer:
    release: str  # the AWS SDK for pandas release the version numbers belong to
    layer: str  # e.g. AWSSDKPandas-Python312
    account: str  # AWS's publishing account
    versions: Mapping[str, int]  # region -> layer version number
    source: str

    def version_in(self, region: str) -> int:
        """The layer's version number in ``region``; an unlisted region is an error naming it."""
        if region not in self.versions:
            raise ValueError(
                f"no AWS SDK for pandas {self.release} layer version for region {region!r} in "
                f"{PANDAS_MANAGED_DIR.relative_to(ROOT)}/versions.json (listed: {', '.join(sorted(self.versions))}): "
                f"add it from {self.source}, or pass -c pricepipe:pandasLayerArn=<the layer's ARN>"
            )
        return self.versions[region]


@functools.cache
def managed_pandas_layer() -> ManagedPandasLayer:
    data = json.loads((PANDAS_MANAGED_DIR / "versions.json").read_text(encoding="utf-8"))
    return ManagedPandasLayer(
        release=str(data["release"]),
        layer=str(data["layer"]),
        account=str(data["account"]),
        versions={str(region): int(version) for region, version in data["versions"].items()},
        source=str(data["source"]),
    )


_JUNK_DIRS = frozenset({"__pycache__"})
_JUNK_SUFFIXES = (".pyc", ".pyo")
_TEST_DIRS = frozenset({"tests"})


# -- bytecode ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bytecode:
    """A CPython of the Lambda runtime's minor version, and what identifies the .pyc it writes."""

    python: Path
    cache_tag: str  # "cpython-312": the .pyc file names
    magic: str  # importlib's magic number: .pyc from interpreters with another one are ignored

    @property
    def identity(self) -> str:
        return f"{self.cache_tag}-{self.magic}"


def _probe(executable: str | Path) -> Bytecode | None:
    """``executable`` as a :class:`Bytecode` if it runs and is CPython ``PYTHON_VERSION``."""
    script = (
        "import sys, importlib.util; "
        "print(sys.implementation.name, '%d.%d' % sys.version_info[:2], sys.implementation.cache_tag, "
        "importlib.util.MAGIC_NUMBER.hex())"
    )
    try:
        result = subprocess.run(
            [str(executable), "-c", script], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 4 or fields[:2] != ["cpython", PYTHON_VERSION]:
        return None
    return Bytecode(python=Path(executable), cache_tag=fields[2], magic=fields[3])


@functools.cache
def bytecode_interpreter() -> Bytecode | None:
    """A CPython ``PYTHON_VERSION`` to compile layers with: ``$PRICEPIPE_LAYER_PYTHON``, else this
    interpreter, else ``python3.12`` on the PATH, else a pyenv installation; None if there is none."""
    override = os.environ.get(BYTECODE_PYTHON_ENV)
    if override:
        found = _probe(override)
        if found is None:
            raise RuntimeError(f"{BYTECODE_PYTHON_ENV}={override} is not a CPython {PYTHON_VERSION} interpreter")
        return found
    candidates: list[str | Path] = [sys.executable]
    on_path = shutil.which(f"python{PYTHON_VERSION}")
    if on_path:
        candidates.append(on_path)
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    pattern = str(pyenv_root / "versions" / f"{PYTHON_VERSION}.*" / "bin" / f"python{PYTHON_VERSION}")
    installed = sorted(glob.glob(pattern), key=_version_key, reverse=True)  # newest patch release first
    candidates += installed
    for candidate in candidates:
        found = _probe(candidate)
        if found is not None:
            return found
    return None


def _version_key(path: str) -> tuple[int, ...]:
    release = Path(path).parent.parent.name  # .../versions/3.12.7/bin/python3.12
    return tuple(int(part) if part.isdigit() else -1 for part in release.split("."))


def bytecode_identity(bytecode: Bytecode | None) -> str:
    """What a layer's bytecode is, for cache keys: the interpreter's tag and magic, or ``sources-only``."""
    return bytecode.identity if bytecode is not None else "sources-only"


def compile_tree(site: Path, bytecode: Bytecode) -> None:
    """Write ``__pycache__/*.pyc`` next to every module under ``site`` (a layer's ``python/``).

    ``unchecked-hash``: the interpreter never compares a .pyc with its source (a layer never changes)
    and the files hold no timestamps, so the same sources always give the same bytes.
    """
    command = [
        str(bytecode.python),
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        str(site),
        "-p",
        RUNTIME_LAYER_ROOT,
        str(site),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"compiling {site} with {bytecode.python} failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr).strip()[-4000:]}"
        )


def _resolve(bytecode: Bytecode | Auto | None) -> Bytecode | None:
    return bytecode_interpreter() if bytecode == "auto" else bytecode


# -- requirements layers -------------------------------------------------------------------------------


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


def requirements_key(requirements: Path, excluded: Sequence[str], bytecode: Bytecode | Auto | None = "auto") -> str:
    """Identity of a requirements layer: what pip is asked for, how, what is taken out after, and
    which bytecode is added."""
    digest = hashlib.sha256()
    digest.update(requirements.read_bytes())
    digest.update("\0".join(pip_arguments(Path("requirements.txt"), Path("target"))).encode())
    digest.update("\0".join(sorted(_normalise(n) for n in excluded)).encode())
    digest.update(LAYOUT_REVISION.encode())
    digest.update(bytecode_identity(_resolve(bytecode)).encode())
    return digest.hexdigest()


@jsii.implements(cdk.ILocalBundling)
class PipLayerBundling:
    """CDK local bundling: fill the asset's output directory from the cached pip build."""

    def __init__(
        self,
        requirements: Path,
        excluded: Sequence[str],
        cache_root: Path = BUILD_DIR,
        bytecode: Bytecode | Auto | None = "auto",
    ) -> None:
        self.requirements = requirements
        self.excluded = tuple(excluded)
        self.cache_root = cache_root
        self.bytecode = bytecode

    # jsii calls back with the bundling options as one struct, not as keyword arguments.
    def try_bundle(self, output_dir: str, options: cdk.BundlingOptions) -> bool:
        built = build_requirements_layer(self.requirements, self.excluded, self.cache_root, self.bytecode)
        _link_tree(built / "python", Path(output_dir) / "python")
        return True


def build_requirements_layer(
    requirements: Path,
    excluded: Sequence[str],
    cache_root: Path = BUILD_DIR,
    bytecode: Bytecode | Auto | None = "auto",
) -> Path:
    """The cached layer directory for these requirements, installing (and compiling) it first if needed."""
    compiler = _resolve(bytecode)
    key = requirements_key(requirements, excluded, compiler)
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
        if compiler is not None:
            compile_tree(target, compiler)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def requirements_layer_code(
    requirements: Path,
    excluded: Sequence[str] = RUNTIME_PROVIDED,
    cache_root: Path = BUILD_DIR,
    bytecode: Bytecode | Auto | None = "auto",
) -> lambda_.Code:
    """Layer code for a pinned requirements file, bundled locally (Docker only as a fallback)."""
    compiler = _resolve(bytecode)
    key = requirements_key(requirements, excluded, compiler)
    removals = " ".join(
        f"{name} {name}-*.dist-info {name}.libs" for name in sorted({_normalise(n).replace("-", "_") for n in excluded})
    )
    docker_command = (
        f"pip install --only-binary=:all: --no-compile -r /asset-input/{requirements.name} -t /asset-output/python"
        f" && cd /asset-output/python && rm -rf {removals}"
        " && python -m compileall -q --invalidation-mode unchecked-hash"
        f" -s /asset-output/python -p {RUNTIME_LAYER_ROOT} /asset-output/python"
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
            local=PipLayerBundling(requirements, excluded, cache_root, compiler),  # type: ignore[arg-type]
        ),
    )


def installed_distributions(site: Path) -> list[str]:
    """Normalised names of the distributions installed in a ``--target`` directory."""
    return sorted(_distribution_name(d) for d in site.glob("*.dist-info"))


# -- package and file layers ---------------------------------------------------------------------------


def stage_package_layer(
    package_dir: Path, cache_root: Path = BUILD_DIR, bytecode: Bytecode | Auto | None = "auto"
) -> Path:
    """Copy a pure-Python package to ``<cache_root>/<name>-<hash>/python/<name>`` and compile it;
    return that root."""
    files = sorted(_package_files(package_dir))
    staged = {f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}": path.read_bytes() for path in files}
    return stage_layer(package_dir.name, {**staged, **compiled_contracts(staged)}, cache_root, bytecode)


def compiled_contracts(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Each bundled data contract (``pricepipe/contracts/<name>.yaml``) compiled to the JSON shipped
    beside it (:func:`pricepipe.contract.compile_contract`): the serving function's cold start then reads
    its contract without importing a YAML parser. The YAML stays the one definition; the JSON is made
    from it on every build, so the two cannot drift."""
    from pricepipe.contract import COMPILED_SUFFIX, compile_contract

    return {
        relative.removesuffix(".yaml") + COMPILED_SUFFIX: compile_contract(content.decode("utf-8"), relative)
        for relative, content in files.items()
        if relative.startswith("pricepipe/contracts/") and relative.endswith(".yaml")
    }


def stage_layer(
    name: str, files: Mapping[str, bytes], cache_root: Path = BUILD_DIR, bytecode: Bytecode | Auto | None = "auto"
) -> Path:
    """A content-addressed layer directory ``<cache_root>/<name>-<hash>/python/<files>``, compiled."""
    compiler = _resolve(bytecode)
    digest = hashlib.sha256(LAYOUT_REVISION.encode())
    for relative in sorted(files):
        digest.update(relative.encode() + b"\0" + files[relative] + b"\0")
    digest.update(bytecode_identity(compiler).encode())
    final = cache_root / f"{name}-{digest.hexdigest()[:16]}"
    if (final / "python").is_dir():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root))
    try:
        for relative, content in files.items():
            destination = staging / "python" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(content)
        if compiler is not None:
            compile_tree(staging / "python", compiler)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def package_layer_code(package_dir: Path) -> lambda_.Code:
    """Layer code for a pure-Python package: no pip, just its files (and their bytecode) under ``python/``."""
    return lambda_.Code.from_asset(str(stage_package_layer(package_dir)))


def files_layer_code(name: str, files: Mapping[str, bytes]) -> lambda_.Code:
    """Layer code holding exactly ``files`` (paths relative to ``python/``)."""
    return lambda_.Code.from_asset(str(stage_layer(name, files)))


# -- sizes ---------------------------------------------------------------------------------------------

# What AWS's build of the managed layer leaves out of pyarrow: it compiles Arrow with FLIGHT, GANDIVA,
# ORC, CUDA and HDFS off and SUBSTRAIT at its default, off (aws-sdk-pandas
# building/lambda/build-lambda-layer.sh); pyarrow's wheel carries them all.
_PYARROW_LEFT_OUT = frozenset({"flight", "gandiva", "orc", "cuda", "hdfs", "substrait"})


def managed_pandas_layer_bytes(cache_root: Path = BUILD_DIR) -> int:
    """An upper bound of the managed pandas layer's unzipped size, measured: its pins
    (:data:`PANDAS_MANAGED_REQUIREMENTS`) installed from wheels, then trimmed as AWS's build trims
    (every shared object stripped, tests and bytecode dropped, boto3/botocore/s3transfer left to the
    runtime, the pyarrow parts its Arrow build leaves out removed). The wheels' Arrow still carries
    more (the S3 filesystem, every codec), so AWS's layer is smaller than this."""
    built = build_requirements_layer(PANDAS_MANAGED_REQUIREMENTS, RUNTIME_PROVIDED, cache_root, bytecode=None)
    trimmed = built.with_name(f"{built.name}-aws-trimmed")
    if not (trimmed / "python").is_dir():
        strip = shutil.which("strip")
        if strip is None:
            raise RuntimeError("measuring the managed pandas layer needs `strip` (binutils) on PATH")
        staging = Path(tempfile.mkdtemp(prefix=".pandas-trim-", dir=cache_root))
        try:
            shutil.copytree(built / "python", staging / "python")
            for path in (staging / "python" / "pyarrow").iterdir():
                if path.is_file() and _PYARROW_LEFT_OUT.intersection(re.split(r"[._]", path.name)):
                    path.unlink()
            shared = [str(p) for p in (staging / "python").rglob("*.so*") if p.is_file() and not p.is_symlink()]
            subprocess.run([strip, *shared], capture_output=True, check=False)  # as AWS's build: errors ignored
            _publish(staging, trimmed)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return unzipped_bytes(trimmed / "python")


def unzipped_bytes(root: Path, skip_suffixes: Sequence[str] = ()) -> int:
    """What a directory counts against Lambda's 250 MB: the sum of its files' sizes (leaving out
    files ending in ``skip_suffixes``, e.g. ``.pyc`` to count sources only)."""
    return sum(
        path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and not path.name.endswith(tuple(skip_suffixes))
    )


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
    """Drop what the runtime never reads: bytecode caches (compiled again for the runtime's Python),
    console scripts, and packages' own test suites at any depth (numpy's alone are 6 MB, 14 MB
    once compiled)."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists():
            continue  # inside a test suite removed a moment ago
        inside_package = path.parent != site
        if path.is_dir() and (path.name in _JUNK_DIRS or (path.name in _TEST_DIRS and inside_package)):
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
