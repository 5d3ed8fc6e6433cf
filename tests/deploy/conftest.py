"""The deployment tier's cluster: deploy/'s pods from the image (`make image`), in network namespaces.

One cluster for the tier (the nightly, the faults and the RayJob run on it in order):
    s3              moto in server mode (the image plus moto), buckets made as a platform team would
    prefect         `prefect server start`
    head            Ray head: raycluster.yaml's head group (its own token, no CPUs for work)
    worker-0/1      Ray workers: raycluster.yaml's cpu group, one pod per replica
    prefect-worker  prefect-worker.yaml's command: `ray start --num-cpus=0`, then `prefect worker start`
The test process reaches them through its own address on the test network (topology.HOST_ADDR).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.deploy import topology as topo
from tests.deploy.topology import Network, Pod, PodEnv

IMAGE = os.environ.get("VAEFLOW_IMAGE", "localhost/vaeflow:0.1.0-cpu")
MOTO_VERSION = version("moto")
MOTO_IMAGE = f"localhost/vaeflow-deploy-test-s3:moto-{MOTO_VERSION}"
# Kubernetes Service names as the manifests use them, and test-network names for the other servers.
S3_HOST, PREFECT_HOST = "s3.vaeflow.test", "prefect.vaeflow.test"
ADDRESSES = {
    "s3": 2, "prefect": 3, "head": 10, "worker-0": 11, "worker-1": 12, "prefect-worker": 20,
    "submitter": 30, "solo": 40,
}  # fmt: skip
BUCKETS = ("vaeflow", "vaeflow-data", "vaeflow-runs")
REGION = "us-east-1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/deploy/" in str(item.fspath):
            item.add_marker(pytest.mark.deploy)


@dataclass
class Cluster:
    net: Network
    pods: dict[str, Pod]
    secrets: dict[str, dict[str, str]]
    hosts: dict[str, str]
    s3_endpoint: str  # as the test process reaches it
    prefect_api: str  # as the test process reaches it
    logs: Path
    config_dir: Path
    extra_pods: list[Pod] = field(default_factory=list)

    def node_pod(self, name: str, node: str, command: list[str], env: PodEnv, **kw) -> Pod:
        """A one-off pod (the RayJob submitter, the one-node baseline) on a node of its own."""
        if node not in self.net.nodes:
            self.net.add(node, ADDRESSES[node])
        pod = Pod(name, node, IMAGE, command, env, self.hosts, address=self.net.nodes[node], **kw)
        self.extra_pods.append(pod)
        return pod

    def credentials(self) -> list[str]:
        """Every secret value a log or object must never hold."""
        s3 = self.secrets["vaeflow-s3"]
        return [
            s3["AWS_ACCESS_KEY_ID"],
            s3["AWS_SECRET_ACCESS_KEY"],
            self.secrets["vaeflow-ray-token"]["auth_token"],
        ]


def _image_exists(image: str) -> bool:
    return topo.podman("image", "exists", image, check=False).returncode == 0


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> str:
    if shutil.which("podman") is None or os.geteuid() != 0:
        pytest.fail("the deployment tier needs podman and root (network namespaces): run `make deploy-test`")
    assert _image_exists(IMAGE), f"{IMAGE} is not built: run `make image` (make deploy-test does)"
    if not _image_exists(MOTO_IMAGE):
        # The S3 server's own image: vaeflow's plus moto, the version the other tiers use.
        folder = tmp_path_factory.mktemp("moto-image")
        (folder / "Containerfile").write_text(
            f"FROM {IMAGE}\nUSER 0\n"
            f'RUN pip install --no-cache-dir "moto[server]=={MOTO_VERSION}"\n'
            "USER 1000:1000\n"
        )
        ca = "/etc/ssl/certs/ca-certificates.crt"
        mount = ["-v", f"{ca}:{ca}:ro"] if Path(ca).exists() else []
        topo.podman("build", "--network", "host", *mount, "-t", MOTO_IMAGE, str(folder), timeout=600)
    return IMAGE


def _prefect_server_pod(hosts: dict[str, str]) -> Pod:
    env = PodEnv(plain={
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # A flow run whose process was killed keeps its deployment's concurrency slot until its lease
        # runs out (default 300 s): the fault test waits for that, so the lease is short here.
        "PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION": "30",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    })  # fmt: skip
    cmd = ["prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"]
    return Pod("prefect", "prefect", IMAGE, cmd, env, hosts)


def _ray_pods(
    hosts: dict[str, str], secrets: dict[str, dict[str, str]], logs: Path, net: Network
) -> dict[str, Pod]:
    ray = topo.manifests()["RayCluster/vaeflow"]["spec"]
    job = topo.manifests()["RayJob/vaeflow-train"]["spec"]
    service = "vaeflow-head-svc"
    pods = {}
    head_group = ray["headGroupSpec"]
    head = head_group["template"]["spec"]
    container = head["containers"][0]
    # The RayJob's ConfigMap, mounted where rayjob.yaml's head mounts it: the RayJob test submits to
    # this cluster instead of a cluster of its own.
    job_head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in job_head["containers"][0]["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in job_head["volumes"] if v["name"] == "config"]
    configmap = topo.manifests()[f"ConfigMap/{volume['configMap']['name']}"]
    config_dir = logs / "configmap"
    config_dir.mkdir()
    for key in configmap["data"]:
        topo.configmap_file(configmap, key, config_dir)
    pods["head"] = Pod(
        "head", "head", IMAGE, topo.ray_start_command(head_group, True, service),
        topo.pod_env(container, secrets, net.nodes["head"]), hosts, shm=_shm(head),
        mounts=[(str(config_dir), mount["mountPath"])], ray_tmp=logs / "ray-head",
    )  # fmt: skip
    (group,) = [g for g in ray["workerGroupSpecs"] if g["groupName"] == "cpu"]
    spec = group["template"]["spec"]
    for i in range(group["replicas"]):
        node = f"worker-{i}"
        pods[node] = Pod(
            node, node, IMAGE, topo.ray_start_command(group, False, service),
            topo.pod_env(spec["containers"][0], secrets, net.nodes[node]), hosts, shm=_shm(spec),
            ray_tmp=logs / f"ray-{node}",
        )  # fmt: skip
    return pods


def _shm(pod_spec: dict) -> str | None:
    for volume in pod_spec.get("volumes", []):
        if volume["name"] == "dshm":
            return volume["emptyDir"]["sizeLimit"]
    return None


def _prefect_worker_pod(
    hosts: dict[str, str], secrets: dict[str, dict[str, str]], net: Network, logs: Path
) -> Pod:
    deployment = topo.manifests()["Deployment/vaeflow-prefect-worker"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = topo.pod_env(container, secrets, net.nodes["prefect-worker"])
    return Pod(
        "prefect-worker", "prefect-worker", IMAGE, [*container["command"], *container["args"]], env, hosts,
        shm=_shm(deployment["spec"]["template"]["spec"]), ray_tmp=logs / "ray-prefect-worker",
    )  # fmt: skip


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


@pytest.fixture(scope="module")
def cluster(images, tmp_path_factory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("deploy")
    # Distinctive credentials, so that the tier can look for them in every log and object afterwards.
    secrets_ = {
        "vaeflow-ray-token": {"auth_token": secrets.token_hex(16)},
        "vaeflow-s3": {
            "AWS_ACCESS_KEY_ID": "AKIAVFDT" + secrets.token_hex(6).upper(),
            "AWS_SECRET_ACCESS_KEY": "vfdt-secret-" + secrets.token_hex(12),
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": f"http://{S3_HOST}:5000",
        },
        "vaeflow-prefect": {"PREFECT_API_URL": f"http://{PREFECT_HOST}:4200/api"},
    }
    with topo.network() as net:
        for node in ("s3", "prefect", "head", "worker-0", "worker-1", "prefect-worker"):
            net.add(node, ADDRESSES[node])
        hosts = {
            S3_HOST: net.nodes["s3"],
            PREFECT_HOST: net.nodes["prefect"],
            "vaeflow-head-svc": net.nodes["head"],
        }
        topo.create_secrets(secrets_)
        # moto reads a bucket from the Host header unless told the endpoint's name (path-style).
        endpoint = PodEnv(plain={"MOTO_S3_CUSTOM_ENDPOINTS": secrets_["vaeflow-s3"]["AWS_ENDPOINT_URL"]})
        s3 = Pod("s3", "s3", MOTO_IMAGE, ["moto_server", "-H", "0.0.0.0", "-p", "5000"], endpoint, hosts)
        pods = {"s3": s3, "prefect": _prefect_server_pod(hosts)}
        pods.update(_ray_pods(hosts, secrets_, logs, net))
        pods["prefect-worker"] = _prefect_worker_pod(hosts, secrets_, net, logs)
        for pod in pods.values():
            pod.address = net.nodes[pod.node]
        cluster = Cluster(
            net, pods, secrets_, hosts,
            s3_endpoint=f"http://{net.nodes['s3']}:5000",
            prefect_api=f"http://{net.nodes['prefect']}:4200/api",
            logs=logs, config_dir=logs / "configmap",
        )  # fmt: skip
        try:
            for name in ("s3", "prefect", "head"):
                pods[name].start()
            topo.wait_for("S3 server", lambda: _healthy(f"{cluster.s3_endpoint}/moto-api/"), 60)
            _make_buckets(cluster)
            # The workers join once the head's GCS listens; the Prefect worker needs its API too.
            head = net.nodes["head"]
            topo.wait_for("Ray head's GCS", lambda: _listening(head, 6379), 120, every=1)
            for name in ("worker-0", "worker-1"):
                pods[name].start()
            topo.wait_for("Prefect server", lambda: _healthy(f"{cluster.prefect_api}/health"), 120, every=1)
            pods["prefect-worker"].start()
            topo.wait_for("4 Ray nodes", lambda: len(alive_nodes(cluster)) == 4, 180)
            yield cluster
        finally:
            for pod in [*pods.values(), *cluster.extra_pods]:
                (logs / f"{pod.name}.log").write_text(pod.logs())


def _listening(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=2):
        return True


def alive_nodes(cluster: Cluster) -> list[dict]:
    """Alive Ray nodes, as `ray list nodes` on the head says (with the cluster's token)."""
    done = cluster.pods["head"].exec(
        "ray", "list", "nodes", "--filter", "state=ALIVE", "--format", "json", timeout=60, check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 else []


def _make_buckets(cluster: Cluster) -> None:
    """The buckets, made by the platform team (here: the test process, with the same credentials)."""
    import boto3

    s3 = cluster.secrets["vaeflow-s3"]
    client = boto3.client(
        "s3", endpoint_url=cluster.s3_endpoint, region_name=REGION,
        aws_access_key_id=s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def aws_env(cluster) -> Iterator[dict[str, str]]:
    """The test process's own AWS environment pointing at the cluster's S3 server."""
    s3 = cluster.secrets["vaeflow-s3"]
    env = {
        "AWS_ENDPOINT_URL": cluster.s3_endpoint,
        "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    from s3fs import S3FileSystem

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    S3FileSystem.clear_instance_cache()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        S3FileSystem.clear_instance_cache()
