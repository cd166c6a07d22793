# The few commands people type. Each one sets up .venv first (pinned, CPU torch).
.PHONY: setup run test lint fmt

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/declora run

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

fmt:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
