# The few commands people type. Each one sets up .venv first (pinned, CPU torch).
.PHONY: setup run test lint fmt docs

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

# the docs (Sphinx + MyST) into build/docs, warnings as errors; the source directory is the
# repository root so that docs/, results/ and CHANGELOG.md link to each other by real paths
docs: setup
	.venv/bin/sphinx-build -W --keep-going -b html -c docs . build/docs
