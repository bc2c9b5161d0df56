# Every target sets up what it needs: a fresh machine with Python 3.11 runs
# `make demo` or `make test` and nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-quick test-deps bench bench-quick bench-yield clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[keras,onnx,torch,dev]"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

## The main job: convert a real model for several targets and benchmark it here.
demo: setup
	$(PY) examples/mnist_demo.py edgesdk-demo

## Debian packages the tests use: a real OpenSSH server and client (deploy tests),
## iproute2 (network namespaces, tc), procps (finding sshd's session processes), and the
## emulated arm64 device: debootstrap builds its Debian userland, qemu-user-static runs it
## through binfmt_misc (binfmt-support registers it); alsa-utils ships recorded spoken words (the
## voice-activity tests' speech).
TEST_DEBS := /usr/sbin/sshd:openssh-server /usr/bin/ssh-keygen:openssh-client /usr/bin/scp:openssh-client \
             /usr/sbin/ip:iproute2 /usr/sbin/tc:iproute2 /usr/bin/ps:procps \
             /usr/sbin/debootstrap:debootstrap /usr/bin/qemu-aarch64-static:qemu-user-static \
             /usr/sbin/update-binfmts:binfmt-support /usr/share/sounds/alsa/Front_Center.wav:alsa-utils
test-deps:
	@missing=$$(for pair in $(TEST_DEBS); do test -e $${pair%%:*} || echo $${pair##*:}; done | sort -u); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## The whole test suite (real conversions, real sshd, an emulated arm64 device; two workers, about 55 minutes on 2 cores).
test: setup test-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup

## The quick subset: everything but the slow real-model tests.
test-quick: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow"

## The performance suite: figures against baselines, written to bench/results/latest.{json,md}; then the yield
## matrix: real models from public wheels through `convert` for each target family (bench/results/yield.{json,md}),
## and convert's memory and time against the plain library's (bench/results/footprint.{json,md}).
bench: setup
	$(PY) bench/run.py
	$(PY) bench/footprint.py
	$(PY) bench/yield_matrix.py

bench-yield: setup
	$(PY) bench/yield_matrix.py

bench-quick: setup
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) edgesdk-out edgesdk-demo build dist *.egg-info
