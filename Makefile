# Every target installs what it needs first, so a fresh clone needs only `make <target>`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PODMAN ?= podman
# Made by build/python_base_image.sh for make test-api-image; removed by make clean.
PYTHON_BASE_IMAGE := localhost/kelpie-python-base:3.11-bookworm

.PHONY: install test test-api-image torture soak lint run demo local bench idle-fleet build-agent \
  container-tools browser-tools clean

install: $(STAMP)

# Re-installs whenever a requirements file changes; otherwise a no-op.
$(STAMP): requirements/api.txt requirements/agent.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	touch $(STAMP)

# build-agent first: tests/build runs dist/kelpie, and building it inside a test's set-up would
# count against pytest's per-test timeout (a no-op, 0.1 s, when the binary is current).
test: install build-agent
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# build/api.Dockerfile built and run with podman (a few minutes the first time: it makes its
# Python base image with debootstrap). Left out of `make test`; CI runs it.
test-api-image: install container-tools
	$(BIN)/python -m pytest -m api_image tests/build/test_containers.py $(PYTEST_ARGS)

# The checkpoint torture suite at full size: 51 kills per save style, 306 in all (about half an
# hour). `make test` runs the same suite bounded to 6 kills per style. A failure prints the seed
# and the command that replays it (KELPIE_TORTURE_SEED=...); the agents' logs stay in
# $TMPDIR/kelpie-torture until the next run.
TORTURE_KILLS_PER_STYLE ?= 51
torture: install
	KELPIE_TORTURE_KILLS_PER_STYLE=$(TORTURE_KILLS_PER_STYLE) $(BIN)/python -m pytest -q -s \
	  -o timeout=7200 --basetemp=$${TMPDIR:-/tmp}/kelpie-torture tests/torture $(PYTEST_ARGS)

# The chaos soak at full size: 300 checkpointing jobs from 3 tenants on 12 agents, 2 API
# processes, its own PostgreSQL cluster, SeaweedFS, and a seeded schedule of faults over ten
# minutes (tests/soak/test_soak.py). `make test` runs it bounded (45 jobs, 6 agents, 45 s of
# faults). It prints the seed and the replay command (KELPIE_SOAK_SEED=...) and its figures; the
# logs stay in $TMPDIR/kelpie-soak-* when it fails.
SOAK_JOBS ?= 300
SOAK_AGENTS ?= 12
SOAK_WINDOW_S ?= 600
soak: install
	KELPIE_SOAK_JOBS=$(SOAK_JOBS) KELPIE_SOAK_AGENTS=$(SOAK_AGENTS) \
	  KELPIE_SOAK_WINDOW_S=$(SOAK_WINDOW_S) KELPIE_SOAK_MAX_STEPS=$${KELPIE_SOAK_MAX_STEPS:-120} \
	  KELPIE_SOAK_SLOW_S=$${KELPIE_SOAK_SLOW_S:-30} KELPIE_SOAK_TIMEOUT_S=$${KELPIE_SOAK_TIMEOUT_S:-5400} \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider \
	  --basetemp=$${TMPDIR:-/tmp}/kelpie-soak-pytest tests/soak $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

run: install
	$(BIN)/python -m api serve --host 127.0.0.1 --port 8787

demo: install
	$(BIN)/python -m examples.demo

# The API, SeaweedFS and an agent on this machine, off Salad, until Ctrl-C (README: "By hand").
local: install
	$(BIN)/python -m examples.local

bench: install
	$(BIN)/python -m bench

# Issue 12's idle fleet alone: 10,000 long-polling agents against 2 API processes on PostgreSQL
# (bench/bench_fleet.py; `make bench` runs it too). KELPIE_BENCH_FLEET_AGENTS=N for another size.
idle-fleet: install
	$(BIN)/python -m bench fleet

build-agent:
	bash build/build_agent.sh

# podman, runc and busybox-static from Debian, for tests/build/test_containers.py.
container-tools:
	bash build/container_tools.sh

# Debian's chromium, for the dashboard's browser tests (tests/e2e/test_dashboard.py).
browser-tools:
	bash build/browser_tools.sh

# Everything the targets above create (tests/build/test_make_clean.py keeps this list whole).
clean:
	rm -rf $(VENV) .venv-bench dist build/work .pytest_cache .ruff_cache .demo .dev \
	  test-artifacts kelpie.db kelpie.db-wal kelpie.db-shm
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	! command -v $(PODMAN) >/dev/null || $(PODMAN) rmi -f $(PYTHON_BASE_IMAGE) >/dev/null 2>&1 || true
