"""The deployment of deploy/ on one Linux host: network namespaces as nodes, podman containers as pods.

Kubernetes cannot be had here, so this lays out what the manifests ask for with the same image and
the same commands: each pod is one container in its own network namespace (its own address, joined to
the others by a bridge in a namespace of its own, with no route out); Kubernetes Services become host
entries (`--add-host vaeflow-head-svc:ADDR`); secrets become podman secrets handed to the container as
environment variables, as `secretKeyRef` and `envFrom.secretRef` do; `status.podIP` is the node's
address. Ray pods get the `ray start` command KubeRay builds from a group's rayStartParams and limits.
Everything is read from the manifests, so a manifest that drifts fails the tier.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERS_CONF = DEPLOY / "podman" / "containers.conf"
LABEL = "vaeflow.deploy-test"
PREFIX = "vfdt"  # every namespace, container, secret and interface this tier makes starts with it
SUBNET = "10.231.57"  # the test network's /24: addresses of namespaces made here, never routed out
HOST_ADDR = f"{SUBNET}.254"  # the test process's own end of the network (a veth in the root namespace)


def run(*cmd: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return run("podman", *args, check=check, timeout=timeout)


# ------------------------------------------------------------------------------------------ manifests


def manifests() -> dict[str, dict[str, Any]]:
    """Kubernetes objects under deploy/, by `Kind/name`."""
    out = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and "apiVersion" in doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def _quantity(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", str(q))
    assert m, f"not a Kubernetes quantity: {q}"
    return int(m.group(1)) * units.get(m.group(2), 1)


def ray_start_command(group: dict[str, Any], head: bool, head_service: str) -> list[str]:
    """`ray start` as KubeRay builds it for a group: its rayStartParams as --key=value, CPUs, GPUs and
    memory from the container's limits where the params do not say, --block to stay in the foreground.
    The node's address is its pod IP (MY_POD_IP, which KubeRay sets from the downward API)."""
    container = group["template"]["spec"]["containers"][0]
    params = dict(group["rayStartParams"])
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        params.setdefault("num-cpus", str(int(_quantity(limits["cpu"]))))
    if "memory" in limits:
        params.setdefault("memory", str(_quantity(limits["memory"])))
    params.setdefault("num-gpus", str(limits.get("nvidia.com/gpu", 0)))
    where = ["--head"] if head else [f"--address={head_service}:6379"]
    flags = [f"--{k}={v}" for k, v in params.items()]
    return [
        "bash",
        "-c",
        shlex.join(["ray", "start", *where, *flags, "--block"]) + ' --node-ip-address="$MY_POD_IP"',
    ]


@dataclass
class PodEnv:
    """A container's environment as the manifest gives it: plain values, and (variable, secret, key)
    references that podman hands over from its secrets store."""

    plain: dict[str, str] = field(default_factory=dict)
    secret_refs: list[tuple[str, str, str]] = field(default_factory=list)


def pod_env(container: dict[str, Any], secrets: dict[str, dict[str, str]], pod_ip: str) -> PodEnv:
    env = PodEnv(plain={"MY_POD_IP": pod_ip})
    for item in container.get("env", []):
        if "value" in item:
            env.plain[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env.secret_refs.append((item["name"], ref["name"], ref["key"]))
        elif source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env.plain[item["name"]] = pod_ip
        else:
            raise AssertionError(f"unsupported env source {source}")
    for item in container.get("envFrom", []):
        name = item["secretRef"]["name"]
        env.secret_refs.extend((key, name, key) for key in secrets[name])
    return env


# ------------------------------------------------------------------------------------------- network


@dataclass
class Network:
    """Namespaces `vfdt-<node>` on one bridge; the test process reaches them through HOST_ADDR."""

    nodes: dict[str, str] = field(default_factory=dict)  # node name -> address

    def add(self, node: str, last_octet: int) -> str:
        ns, addr = f"{PREFIX}-{node}", f"{SUBNET}.{last_octet}"
        outer, inner = f"{PREFIX}{last_octet}a", f"{PREFIX}{last_octet}b"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", outer, "netns", f"{PREFIX}-net")
        run("ip", "netns", "exec", f"{PREFIX}-net", "ip", "link", "set", outer, "master", "br0", "up")
        run("ip", "link", "set", inner, "netns", ns)
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "name", "eth0")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        self.nodes[node] = addr
        return addr

    @staticmethod
    def namespace(node: str) -> str:
        return f"/run/netns/{PREFIX}-{node}"


def clean_up() -> None:
    """Remove what an earlier run of this tier left: its containers, secrets, namespaces and veth."""
    ids = podman("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        podman("rm", "-f", "-t", "0", *ids, check=False, timeout=180)
    for line in podman("secret", "ls", "--format", "{{.Name}}", check=False).stdout.split():
        if line.startswith(f"{PREFIX}-"):
            podman("secret", "rm", line, check=False)
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(f"{PREFIX}-"):
            run("ip", "netns", "delete", name, check=False)
    run("ip", "link", "delete", f"{PREFIX}-host", check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    clean_up()
    taken = run("ip", "-o", "addr").stdout
    assert f" {SUBNET}." not in taken, f"{SUBNET}.0/24 is in use on this host: the test network needs it"
    run("ip", "netns", "add", f"{PREFIX}-net")
    run("ip", "netns", "exec", f"{PREFIX}-net", "ip", "link", "add", "br0", "type", "bridge")
    run("ip", "netns", "exec", f"{PREFIX}-net", "ip", "link", "set", "br0", "up")
    # The test process's own port on the bridge: an address in the subnet, no forwarding anywhere.
    run("ip", "link", "add", f"{PREFIX}-host", "type", "veth", "peer", "name", f"{PREFIX}-hostb")
    run("ip", "link", "set", f"{PREFIX}-hostb", "netns", f"{PREFIX}-net")
    run("ip", "netns", "exec", f"{PREFIX}-net", "ip", "link", "set", f"{PREFIX}-hostb", "master", "br0", "up")
    run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", f"{PREFIX}-host")
    run("ip", "link", "set", f"{PREFIX}-host", "up")
    try:
        yield Network()
    finally:
        clean_up()


# ---------------------------------------------------------------------------------------- containers


def create_secrets(secrets: dict[str, dict[str, str]]) -> None:
    """Each secret key as a podman secret `vfdt-<secret>-<key>` (a file only root can read)."""
    for name, values in secrets.items():
        for key, value in values.items():
            subprocess.run(
                ["podman", "secret", "create", _secret_name(name, key), "-"],
                input=value, text=True, check=True, capture_output=True,
                env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
            )  # fmt: skip


def _secret_name(secret: str, key: str) -> str:
    return f"{PREFIX}-{secret}-{key}".lower().replace("_", "-")


@dataclass
class Pod:
    """One container in one node's namespace."""

    name: str
    node: str
    image: str
    command: list[str]
    env: PodEnv
    hosts: dict[str, str]
    shm: str | None = None
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (host path, container path), read-only
    ray_tmp: Path | None = None  # a host folder mounted at /tmp/ray, to read Ray's session files
    address: str = ""  # the node's address: its host name resolves to it, as a pod's does

    @property
    def container(self) -> str:
        return f"{PREFIX}-{self.name}"

    def start(self) -> None:
        args = [
            "run", "-d", "--name", self.container, "--label", f"{LABEL}=1", "--hostname", self.name,
            "--network", f"ns:{Network.namespace(self.node)}", "--user", "1000:1000",
        ]  # fmt: skip
        # The kubelet writes the pod's own name into /etc/hosts with the pod IP: gloo finds the address
        # it tells its peers that way (without it, 127.0.0.1, and the other node's rank cannot connect).
        hosts = {**self.hosts, self.name: self.address} if self.address else self.hosts
        for host, addr in hosts.items():
            args += ["--add-host", f"{host}:{addr}"]
        for key, value in self.env.plain.items():
            args += ["--env", f"{key}={value}"]
        for var, secret, key in self.env.secret_refs:
            args += ["--secret", f"{_secret_name(secret, key)},type=env,target={var}"]
        if self.shm:
            args += ["--shm-size", str(_quantity(self.shm))]
        for src, dst in self.mounts:
            args += ["-v", f"{src}:{dst}:ro"]
        if self.ray_tmp is not None:
            self.ray_tmp.mkdir(parents=True, exist_ok=True)
            os.chown(self.ray_tmp, 1000, 1000)
            args += ["-v", f"{self.ray_tmp}:/tmp/ray"]
        podman(*args, self.image, *self.command)

    def exec(self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True):
        extra = [a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")]
        return podman("exec", *extra, self.container, *cmd, timeout=timeout, check=check)

    def kill(self) -> None:
        podman("kill", "--signal", "KILL", self.container)
        podman("wait", self.container, check=False, timeout=60)

    def restart(self) -> None:
        """Start the killed container again: the same command, as a Deployment's pod is replaced."""
        podman("start", self.container)

    def logs(self) -> str:
        done = podman("logs", self.container, check=False, timeout=60)
        return done.stdout + done.stderr

    def running(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.container, check=False).stdout
        return out.strip() == "true"


def wait_for(what: str, probe, timeout: float, every: float = 2.0):
    """Call `probe` until it returns something truthy; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as e:  # a server not up yet: keep polling, report the last error
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout:.0f}s (last: {last!r})")


def configmap_file(configmap: dict[str, Any], key: str, folder: Path) -> Path:
    path = folder / key
    path.write_text(configmap["data"][key])
    path.chmod(0o644)
    return path
