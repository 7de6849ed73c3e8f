# The two front-door commands: `make run` (the whole service on the embedded default) and
# `make test`. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# make run's bind: loopback only; HOST=0.0.0.0 opens it to the network (no login link then).
HOST ?= 127.0.0.1
EMULATOR_PORT ?= 8090

.PHONY: install run demo test lint bench clean env hash-password subscriptions flask

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

# The emulator + the service + one chat.completion and one model.failed (webhooks_app/demo.py).
demo: install
	$(BIN)/python -m webhooks_app.demo --port $(PORT) --emulator-port $(EMULATOR_PORT)

# Commands on make run's database (the embedded PostgreSQL is joined, or started for the
# command): make subscriptions ARGS="register --url https://..."; make flask ARGS="db current".
subscriptions: install
	$(BIN)/python -m webhooks_app.devserver exec -- $(BIN)/flask --app webhooks_app subscriptions $(ARGS)

flask: install
	$(BIN)/python -m webhooks_app.devserver exec -- $(BIN)/flask --app webhooks_app $(ARGS)

# An Argon2id hash for ADMIN_PASSWORD_HASH (asks for the password).
hash-password: install
	$(BIN)/python -m webhooks_app.admin.hash_password

# Fresh SECRET_KEY and ENCRYPTION_KEYS for a deployment: make env > .env (docker compose reads it).
env: install
	@$(BIN)/python -c "import secrets; from cryptography.fernet import Fernet; print('SECRET_KEY=' + secrets.token_hex(32)); print('ENCRYPTION_KEYS=' + Fernet.generate_key().decode())"

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
