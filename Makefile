# corral — `make demo` and `make test` each set everything up first on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := bubblewrap python3-venv python3-seccomp openssh-client openssh-server iproute2 util-linux procps curl git ca-certificates chromium python3-pip openssl gcc libc6-dev skopeo umoci fuse-overlayfs tar g++ python3-pytest python3-numpy

.PHONY: install system-deps demo test test-root test-unprivileged bench lint format clean

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "corral needs these system packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml src/corral/egress/launcher.c src/corral/images/overlay_exec.c src/corral/sandbox/setid.c src/corral/egress/init.c
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@set -o pipefail; $(BIN)/python -m pip install -q -e '.[dev,clients]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@# static where libc.a is installed: no dynamic loader on each sandbox start
	@cc -O2 -Wall -static -o src/corral/egress/corral-egress-launcher src/corral/egress/launcher.c 2>/dev/null \
	  || cc -O2 -Wall -o src/corral/egress/corral-egress-launcher src/corral/egress/launcher.c \
	  || echo "note: no C compiler; the egress gateway uses its slower Python launcher"
	@cc -O2 -Wall -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables -no-pie \
	  -o src/corral/egress/corral-init src/corral/egress/init.c \
	  || echo "note: corral-init not built; the launcher stays as each sandbox's pid 1"
	@cc -O2 -Wall -static -o src/corral/sandbox/corral-setid src/corral/sandbox/setid.c 2>/dev/null \
	  || cc -O2 -Wall -o src/corral/sandbox/corral-setid src/corral/sandbox/setid.c \
	  || echo "note: no C compiler; a root supervisor drops to each sandbox's id with prlimit + setpriv"
	@cc -O2 -Wall -o src/corral/images/corral-overlay-exec src/corral/images/overlay_exec.c \
	  || echo "note: no C compiler; image roots use the slower Python overlay helper"
	@touch $(STAMP)

demo: install
	$(BIN)/corral demo rome

test: install
	@bash scripts/test-isolated.sh

bench: install
	@bash scripts/netns-run.sh $(BIN)/python -m benchmarks.run $(ONLY)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results.json
