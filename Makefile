# The two front-door commands: `make run` (the whole service on the embedded default) and
# `make test`. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# make run's bind: loopback only; HOST=0.0.0.0 opens it to the network (no login link then).
HOST ?= 127.0.0.1

.PHONY: install run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# web (gunicorn) + worker (Celery) + beat (Celery beat) under honcho. Without DATABASE_URL /
# REDIS_URL it starts an embedded PostgreSQL and uses a filesystem broker under ./instance: no
# server to install (webhooks_app/devserver.py).
run: install
	$(BIN)/python -m webhooks_app.devserver --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
