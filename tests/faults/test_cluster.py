"""The local Ray cluster seen from the network (scenario 13): what listens where, and who may call it.

Ray 2.60 binds its servers to the node IP or 0.0.0.0 and cannot be told to use loopback only, so a
non-loopback listener is acceptable only behind token auth: a client without the token is refused.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.faults._helpers import finish, python
from tests.faults.conftest import S3, Outcome, RayCluster

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(300, method="signal")]

METRICS_PORT = int(os.environ.get("AUTOSCALER_METRIC_PORT", 44217))
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[?::1\]?|\[?::ffff:127\.\d+\.\d+\.\d+\]?)$")


@dataclass
class Listener:
    host: str
    port: int
    process: str
    pid: int

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] on {self.host}:{self.port}"


def _listeners() -> list[Listener]:
    """Every listening TCP socket on the machine with its owner (`ss -ltnpH`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue  # no owner shown: not a process of ours
        host, _, port = fields[3].rpartition(":")
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            found.append(Listener(host, int(port), name, int(pid)))
    return found


def _cluster_pids(s3: S3) -> set[int]:
    """This process (the driver) and its descendants, minus the S3 server and the proxy."""
    me = psutil.Process(os.getpid())
    pids = {me.pid}
    for p in me.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "moto" in cmd or "tests.faults.proxy" in cmd:
            continue
        pids.add(p.pid)
    return pids


def _monitor_running(pids: set[int]) -> bool:
    """Whether the cluster runs Ray's autoscaler monitor (the process behind the metrics port)."""
    for pid in pids:
        try:
            if any("autoscaler/_private/monitor.py" in part for part in psutil.Process(pid).cmdline()):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


UNAUTHENTICATED = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
@ray.remote
def who():
    import os
    return os.getpid()
print("SERVED", ray.get(who.remote(), timeout=30), flush=True)
"""


def _http_get(port: int, path: str) -> str | None:
    """The status line of GET path on 127.0.0.1:port, or None when it does not speak HTTP."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.settimeout(3)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(200).decode("latin-1")
    except OSError:
        return None
    return head.splitlines()[0] if head.startswith("HTTP/") else None


@pytest.mark.scenario(13, "local cluster: no non-loopback listener, or unauthenticated calls refused")
def test_the_local_cluster_is_loopback_only_or_refuses_unauthenticated_calls(
    s3: S3, ray_cluster: RayCluster, tmp_path: Path, scenario: Outcome
) -> None:
    ours = _cluster_pids(s3)
    listeners = _listeners()
    exposed = [ln for ln in listeners if ln.pid in ours and not LOOPBACK.match(ln.host)]
    report = [f"{len(exposed)} non-loopback listeners: " + ", ".join(sorted({str(ln) for ln in exposed}))]
    # Ray's autoscaler monitor serves Prometheus metrics on a fixed port (AUTOSCALER_METRIC_PORT,
    # 44217): when another cluster on this machine holds it, this cluster's server is not up to probe.
    taken = [ln for ln in listeners if ln.port == METRICS_PORT and ln.pid not in ours]
    if taken and _monitor_running(ours):
        report.append(f"metrics port {METRICS_PORT} held by another cluster ({taken[0]}): not probed here")
    scenario.detail = report[0]
    if not exposed:
        return

    # A stranger: no token in the environment, none in ~/.ray, auth off or left to Ray's default.
    stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    stranger["HOME"] = str(tmp_path)
    served = []
    callers = {
        "RAY_AUTH_MODE=disabled": {**stranger, "RAY_AUTH_MODE": "disabled"},
        "RAY_AUTH_MODE unset": stranger,
        "with the token (control)": ray_cluster.env,
    }
    procs = {who: python(UNAUTHENTICATED, ray_cluster.address, env=env) for who, env in callers.items()}
    for who, proc in procs.items():
        rc, out = finish(proc, 90)
        reason = next((ln for ln in reversed(out.splitlines()) if "rror" in ln), "")[:200]
        verdict = "served" if "SERVED" in out else "hung" if rc is None else f"refused (rc {rc}: {reason})"
        report.append(f"ray.init {who}: {verdict}")
        if who.endswith("(control)"):
            # The refusals are about the token: the same call with it goes through.
            assert verdict == "served", f"the control call with the token was not served:\n{out[-1500:]}"
        elif not verdict.startswith("refused"):
            served.append(f"{who}: {verdict}\n{out[-1500:]}")

    # HTTP servers among them (the dashboard agent's job API): an anonymous GET must not be answered.
    for ln in {(ln.port, ln.process) for ln in exposed}:
        status = _http_get(ln[0], "/api/jobs/")
        if status is not None:
            report.append(f"GET /api/jobs/ on {ln[1]}:{ln[0]}: {status}")
            if " 200 " in status:
                served.append(f"{ln[1]}:{ln[0]} answered GET /api/jobs/ without a token: {status}")
    scenario.detail = "; ".join(report)
    assert not served, "unauthenticated access to the local cluster:\n" + "\n".join(served)
