"""Lambda layers: built without Docker for python3.12 x86_64, cached, compiled, and shipping what the runtime needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Template

from infrastructure import layers
from infrastructure.stacks import layer_names
from infrastructure.stacks.pipeline_stack import PACKAGE_DIR, REQUIREMENTS_DIR

if TYPE_CHECKING:
    from tests.infrastructure.conftest import Synthesized

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]
BYTECODE = layers.bytecode_interpreter()


def _layer_dir(synthesized: Synthesized, resources: Resources, construct_id: str) -> Path:
    (layer,) = [
        r for name, r in resources.items() if r["Type"] == "AWS::Lambda::LayerVersion" and name.startswith(construct_id)
    ]
    return synthesized.asset_path(layer["Properties"]["Content"]["S3Key"])


def test_given_the_dependency_layer_then_it_ships_the_pinned_packages_under_python(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    site = _layer_dir(synthesized, pipeline_resources, "DepsLayer") / "python"
    for package in ("psycopg", "psycopg_binary", "pydantic", "pydantic_core", "yaml", "pgpq"):
        assert (site / package / "__init__.py").is_file(), package
    assert (site / "aws_lambda_powertools").is_dir()
    assert list(site.glob("pydantic-2.14.4.dist-info")), "the pinned release, not an older manylinux2014 one"


def test_given_the_dependency_layer_then_it_leaves_pandas_and_the_aws_sdk_to_the_runtime_and_managed_layer(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    site = _layer_dir(synthesized, pipeline_resources, "DepsLayer") / "python"
    for package in ("pyarrow", "numpy", "pandas", "boto3", "botocore"):
        assert not (site / package).exists(), package
        assert not list(site.glob(f"{package}-*.dist-info")), package
    size_mb = layers.unzipped_bytes(site) / 2**20
    assert size_mb < 60, f"{size_mb:.0f} MB leaves too little of Lambda's 250 MB for the pandas layer and code"


def test_given_the_dependency_layer_then_its_wheels_are_for_linux_x86_64_cpython_312(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    site = _layer_dir(synthesized, pipeline_resources, "DepsLayer") / "python"
    extensions = list(site.rglob("*.so"))
    assert extensions, "psycopg-binary and pydantic-core are compiled"
    foreign = [p.name for p in extensions if "cpython-" in p.name and "cpython-312-x86_64-linux-gnu" not in p.name]
    assert foreign == []


def test_given_the_package_layer_then_it_ships_the_pricepipe_package_with_its_data_files(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    package = _layer_dir(synthesized, pipeline_resources, "PackageLayer") / "python" / "pricepipe"
    assert (package / "__init__.py").is_file()
    assert sorted(p.name for p in package.glob("migrations/*.sql")) == sorted(
        p.name for p in (PACKAGE_DIR / "migrations").glob("*.sql")
    )
    assert (package / "contracts" / "hotel_rates.yaml").is_file()
    # every subpackage (training/, serving/, drift/, ...), not just the top-level modules
    subpackages = {p.parent.relative_to(PACKAGE_DIR) for p in PACKAGE_DIR.rglob("__init__.py")}
    assert {p.parent.relative_to(package) for p in package.rglob("__init__.py")} >= subpackages


@pytest.mark.skipif(BYTECODE is None, reason=f"no CPython {layers.PYTHON_VERSION} here: layers ship sources only")
@pytest.mark.parametrize(
    ("stack", "construct_id"),
    [
        ("pipeline", "DepsLayer"),
        ("pipeline", "NumpyLayer"),
        ("pipeline", "MlflowLayer"),
        ("pipeline", "PackageLayer"),
        ("serving", "ServingLayer"),
    ],
)
def test_given_a_layer_then_every_module_has_unchecked_hash_bytecode_for_the_runtimes_python(
    stack: str, construct_id: str, synthesized: Synthesized, pipeline_resources: Resources, serving_resources: Resources
) -> None:
    """/opt is read-only in Lambda: without these .pyc every cold start compiles every module it imports."""
    assert BYTECODE is not None
    resources = pipeline_resources if stack == "pipeline" else serving_resources
    site = _layer_dir(synthesized, resources, construct_id) / "python"
    sources = [p for p in site.rglob("*.py") if p.is_file()]
    assert sources
    missing = [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{BYTECODE.cache_tag}.pyc").is_file()]
    assert missing == []
    assert not [p for p in site.rglob("*.pyc") if BYTECODE.cache_tag not in p.name], "only the runtime's version"
    sample = next(site.rglob(f"*.{BYTECODE.cache_tag}.pyc")).read_bytes()
    assert sample[:4] == bytes.fromhex(BYTECODE.magic)
    assert int.from_bytes(sample[4:8], "little") == 0b01, "hash-based, unchecked: never compared with the source"


@pytest.mark.parametrize(
    ("stack", "construct_id"),
    [("pipeline", "DepsLayer"), ("pipeline", "NumpyLayer"), ("pipeline", "MlflowLayer"), ("serving", "ServingLayer")],
)
def test_given_a_requirements_layer_then_it_ships_no_test_suites_scripts_runtime_provided_sdk_or_optuna(
    stack: str, construct_id: str, synthesized: Synthesized, pipeline_resources: Resources, serving_resources: Resources
) -> None:
    resources = pipeline_resources if stack == "pipeline" else serving_resources
    site = _layer_dir(synthesized, resources, construct_id) / "python"
    assert not [p for p in site.rglob("tests") if p.is_dir()]
    assert not (site / "bin").exists()
    for package in layers.RUNTIME_PROVIDED:
        assert not (site / package).exists(), package
    # the search's sampler belongs to the training container alone (training_jobs/requirements.txt)
    assert not (site / "optuna").exists()
    assert not list(site.glob("optuna-*.dist-info"))


def test_given_the_layer_requirements_then_none_asks_for_optuna_which_only_the_training_image_pins() -> None:
    files = sorted(REQUIREMENTS_DIR.glob("*.txt"))
    assert files
    for path in files:
        names = [line.split("==")[0].strip().lower() for line in path.read_text().splitlines()]
        assert "optuna" not in names, path.name
    training = (REQUIREMENTS_DIR.parents[1] / "training_jobs" / "requirements.txt").read_text().splitlines()
    assert "optuna==5.0.0" in training


def test_given_the_mlflow_layer_then_it_holds_mlflow_and_its_sql_store_but_nothing_the_dependency_layer_ships(
    synthesized: Synthesized, pipeline_resources: Resources
) -> None:
    site = _layer_dir(synthesized, pipeline_resources, "MlflowLayer") / "python"
    deps = _layer_dir(synthesized, pipeline_resources, "DepsLayer") / "python"
    for package in ("mlflow", "sqlalchemy", "alembic"):
        assert (site / package / "__init__.py").is_file(), package
    assert list(site.glob("mlflow_skinny-3.17.2.dist-info")), "the training image's MLflow release"
    shared = set(layers.installed_distributions(site)) & set(layers.installed_distributions(deps))
    assert shared == set(), "each package once on a function's path"
    assert (deps / "psycopg").is_dir(), "MLflow's SQL store reaches PostgreSQL through the dependency layer's psycopg"
    assert not (site / "numpy").exists()


def test_given_the_numpy_layer_then_it_is_numpy_alone(synthesized: Synthesized, pipeline_resources: Resources) -> None:
    site = _layer_dir(synthesized, pipeline_resources, "NumpyLayer") / "python"
    assert layers.installed_distributions(site) == ["numpy"]
    assert list(site.glob("numpy-2.4.6.dist-info"))


def test_given_our_layers_then_they_have_fixed_names_and_target_python312_on_x86_64(
    pipeline_template: Template, serving_template: Template
) -> None:
    names = []
    for template in (pipeline_template, serving_template):
        template.all_resources_properties(
            "AWS::Lambda::LayerVersion", {"CompatibleRuntimes": ["python3.12"], "CompatibleArchitectures": ["x86_64"]}
        )
        names += [r["Properties"]["LayerName"] for r in template.find_resources("AWS::Lambda::LayerVersion").values()]
    assert sorted(names) == sorted(
        [
            layer_names.DEPS,
            layer_names.NUMPY,
            layer_names.MLFLOW,
            layer_names.PACKAGE,
            layer_names.MODEL,  # the "no model" version the model-layer parameter starts with
            layer_names.SERVING,
        ]
    )


def test_given_unchanged_requirements_then_the_layer_asset_hash_is_unchanged_and_follows_only_that_file(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    folder = tmp_path / "requirements"
    folder.mkdir()
    first, second = folder / "a.txt", folder / "b.txt"
    first.write_text("PyYAML==6.0.4\n")
    second.write_text("PyYAML==6.0.3\n")
    for requirements in (first, second):  # a finished build in the cache: no pip, no network
        site = cache / layers.requirements_key(requirements, (), None) / "python" / "yaml"
        site.mkdir(parents=True)
        (site / "__init__.py").write_text("")
    app = App(outdir=str(tmp_path / "cdk.out"))
    stack = Stack(app, "Layers")

    def s3_key(construct_id: str, requirements: Path) -> str:
        layer = lambda_.LayerVersion(
            stack, construct_id, code=layers.requirements_layer_code(requirements, (), cache_root=cache, bytecode=None)
        )
        cfn = layer.node.default_child
        assert isinstance(cfn, lambda_.CfnLayerVersion)
        return str(stack.resolve(cfn.content)["s3Key"])

    original = s3_key("First", first)
    (folder / "README.md").write_text("a neighbour of the requirements file")
    assert s3_key("FirstAgain", first) == original
    assert s3_key("Second", second) != original


def test_given_the_pip_command_then_it_targets_lambda_and_accepts_newer_manylinux_tags() -> None:
    arguments = layers.pip_arguments(Path("reqs.txt"), Path("out/python"))
    platforms = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--platform"]
    assert platforms == ["manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]
    for flag in ("--only-binary=:all:", "--no-compile"):
        assert flag in arguments
    assert arguments[arguments.index("--python-version") + 1] == "3.12"
    assert arguments[arguments.index("--implementation") + 1] == "cp"
    assert arguments[arguments.index("--target") + 1] == str(Path("out/python"))
    assert arguments[arguments.index("-r") + 1] == "reqs.txt"


def test_given_a_requirements_file_then_its_key_changes_with_content_and_exclusions_only(tmp_path: Path) -> None:
    requirements = tmp_path / "deps.txt"
    requirements.write_text("PyYAML==6.0.4\n")
    key = layers.requirements_key(requirements, ["numpy"], None)
    assert layers.requirements_key(requirements, ["numpy"], None) == key
    assert layers.requirements_key(requirements, ["numpy", "pandas"], None) != key
    compiled = layers.Bytecode(Path("python3.12"), "cpython-312", "cb0d0d0a")
    assert layers.requirements_key(requirements, ["numpy"], compiled) != key, "bytecode is part of what ships"
    requirements.write_text("PyYAML==6.0.3\n")
    assert layers.requirements_key(requirements, ["numpy"], None) != key


def test_given_a_cached_build_when_bundling_then_the_asset_is_filled_from_the_cache_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = tmp_path / "deps.txt"
    requirements.write_text("PyYAML==6.0.4\n")
    cache = tmp_path / "cache"
    cached = cache / layers.requirements_key(requirements, (), None) / "python" / "yaml"
    cached.mkdir(parents=True)
    (cached / "__init__.py").write_text("# cached\n")

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the build is cached")

    monkeypatch.setattr(layers.subprocess, "run", no_pip)
    output = tmp_path / "asset"
    output.mkdir()
    assert layers.PipLayerBundling(requirements, (), cache, None).try_bundle(str(output), None)  # type: ignore[arg-type]
    assert (output / "python" / "yaml" / "__init__.py").read_text() == "# cached\n"


def test_given_an_installed_distribution_when_removed_then_its_recorded_files_go_and_others_stay(
    tmp_path: Path,
) -> None:
    site = tmp_path / "python"
    (site / "numpy" / "core").mkdir(parents=True)
    (site / "numpy" / "core" / "x.so").write_bytes(b"\0")
    (site / "numpy" / "__init__.py").write_text("")
    (site / "numpy.libs").mkdir()
    (site / "numpy.libs" / "libopenblas.so").write_bytes(b"\0")
    dist_info = site / "numpy-2.4.6.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.4.6\n\n")
    (dist_info / "RECORD").write_text(
        "numpy/__init__.py,,\nnumpy/core/x.so,,\nnumpy.libs/libopenblas.so,,\n"
        "numpy-2.4.6.dist-info/METADATA,,\nnumpy-2.4.6.dist-info/RECORD,,\n../../bin/f2py,,\n"
    )
    (site / "yaml").mkdir()
    (site / "yaml" / "__init__.py").write_text("")
    other = site / "pyyaml-6.0.4.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Name: PyYAML\n")

    assert layers.remove_distributions(site, ["NumPy", "pandas"]) == ["numpy"]
    assert sorted(p.name for p in site.iterdir()) == ["pyyaml-6.0.4.dist-info", "yaml"]


def test_given_a_package_when_staged_then_the_copy_is_content_addressed_and_skips_bytecode(tmp_path: Path) -> None:
    package = tmp_path / "src" / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "__pycache__" / "__init__.cpython-312.pyc").write_bytes(b"\0")
    (package / "data.yaml").write_text("a: 1\n")
    cache = tmp_path / "cache"

    first = layers.stage_package_layer(package, cache, bytecode=None)
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()) == [
        "python/pkg/__init__.py",
        "python/pkg/data.yaml",
    ]
    assert layers.stage_package_layer(package, cache, bytecode=None) == first
    (package / "__init__.py").write_text("VALUE = 2\n")
    second = layers.stage_package_layer(package, cache, bytecode=None)
    assert second != first
    assert (second / "python" / "pkg" / "__init__.py").read_text() == "VALUE = 2\n"


@pytest.mark.skipif(BYTECODE is None, reason=f"no CPython {layers.PYTHON_VERSION} here")
def test_given_a_package_when_staged_with_bytecode_then_it_is_compiled_reproducibly_under_the_runtime_path(
    tmp_path: Path,
) -> None:
    assert BYTECODE is not None
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def where():\n    return __file__\n")

    first = layers.stage_package_layer(package, tmp_path / "a", bytecode=BYTECODE)
    second = layers.stage_package_layer(package, tmp_path / "b", bytecode=BYTECODE)
    assert first.name == second.name
    assert first.name != layers.stage_package_layer(package, tmp_path / "c", bytecode=None).name
    pyc = f"python/pkg/__pycache__/__init__.{BYTECODE.cache_tag}.pyc"
    assert (first / pyc).read_bytes() == (second / pyc).read_bytes(), "no timestamps, no build paths"
    assert f"{layers.RUNTIME_LAYER_ROOT}/pkg/__init__.py".encode() in (first / pyc).read_bytes()


def test_given_a_site_when_stripped_then_test_suites_go_at_any_depth_but_not_top_level_modules(tmp_path: Path) -> None:
    site = tmp_path / "python"
    for folder in ("numpy/_core/tests", "numpy/tests", "tests", "pkg/testing"):
        (site / folder).mkdir(parents=True)
        (site / folder / "x.py").write_text("")
    layers._strip(site)
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*.py")) == ["pkg/testing/x.py", "tests/x.py"]
