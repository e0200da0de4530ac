# Every target installs what it needs first, so a fresh clone needs only `make <target>`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test lint run demo bench build-agent clean

install: $(STAMP)

# Re-installs whenever a requirements file changes; otherwise a no-op.
$(STAMP): requirements/api.txt requirements/agent.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

run: install
	$(BIN)/python -m api serve --host 127.0.0.1 --port 8787

demo: install
	$(BIN)/python -m examples.demo

bench: install
	$(BIN)/python -m bench

build-agent:
	bash build/build_agent.sh

clean:
	rm -rf $(VENV) dist .pytest_cache kelpie.db
