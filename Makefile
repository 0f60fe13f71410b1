# The commands of the README:  make quick  (a short real MNIST run),  make reproduce  (the paper tables, see
# docs/reproduce.md)  and  make test  (the test suite).
# Both create the virtual environment first and install what is missing (Debian packages too, as root).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?=
QUICK_FLAGS ?= --method binarynet --epochs 3 --train-size 10000
QUICK_OUT ?= runs/quick-binarynet
# make reproduce BUDGET=smoke DATA_DIR=... [ONLY='mnist-*'] [ENGINE=slurm] [REPRODUCE_FLAGS='--jobs 2']
BUDGET ?= paper
ONLY ?=
ENGINE ?= local
REPRODUCE_FLAGS ?=

.PHONY: quick test reproduce venv system-packages clean lock docker peer

quick: venv
	$(PY) mnist.py $(QUICK_FLAGS) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out $(QUICK_OUT) --resume

reproduce: venv
	$(PY) reproduce.py --budget $(BUDGET) --engine $(ENGINE) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
		$(if $(ONLY),--only '$(ONLY)') $(REPRODUCE_FLAGS)

test: venv
	$(PY) -m pytest -q tests

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@bash scripts/system_packages.sh $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache

# The peer framework of `benchmark_training.py --peer` (Larq/TensorFlow, docs/speed.md), in its own environment.
PEER_VENV := .venv-peer
peer: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: requirements-peer.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r requirements-peer.txt
	touch $@

# requirements.lock / requirements-gpu.lock: every package pinned with its hashes (the Docker image installs only
# these). pip-compile runs in a throwaway venv, against PyPI alone (the machine's pip config is left out).
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
LOCK_VENV := .cache/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip-tools==7.6.2
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) \
		-o requirements.lock requirements.txt
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) \
		-o requirements-gpu.lock requirements-gpu.txt
	rm -rf $(LOCK_VENV)

# Build the Docker image and check it (docs/docker.md): needs a running Docker daemon.
docker:
	bash scripts/docker_check.sh
