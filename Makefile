# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: run test lint install build-codec migrate demo worker interop bench bench-codec clean faults
.PHONY: cluster cluster-stop cluster-status cluster-interop bench-cluster bench-memory

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) build-codec

# The hot codec modules compiled with mypyc from their own source (scripts/build_codec.py);
# without a compiler the pure-Python modules run. A no-op when the build is current.
build-codec: $(STAMP)
	$(BIN)/python scripts/build_codec.py

migrate: install
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	ILP_PUBLIC_URL=$${ILP_PUBLIC_URL:-http://$(HOST):$(PORT)} $(BIN)/python manage.py setup_demo

run: demo
	@echo ""
	@echo "  Interledger node on http://$(HOST):$(PORT)/"
	@echo "  admin:          http://$(HOST):$(PORT)/admin/   (user demo, password demo)"
	@echo "  demo pointer:   \$$$(HOST):$(PORT)/demo   (SPSP: http://$(HOST):$(PORT)/demo)"
	@echo "  operations:     http://$(HOST):$(PORT)/ops/   your pages: http://$(HOST):$(PORT)/me/"
	@echo "  BTP endpoint:   btp+ws://NAME:TOKEN@$(HOST):$(PORT)/btp   (python manage.py add_peer ...)"
	@echo "  HTTP-OER:       http://$(HOST):$(PORT)/ilp"
	@echo "  API docs:       http://$(HOST):$(PORT)/api/docs/"
	@echo "  Celery worker (only with REDIS_URL set): $(BIN)/celery -A interledger_site worker"
	@echo ""
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} ILP_PUBLIC_URL=$${ILP_PUBLIC_URL:-http://$(HOST):$(PORT)} $(BIN)/python -m interledger_site.serve -b $(HOST) -p $(PORT) interledger_site.asgi:application

test: install
	$(BIN)/python -m pytest -q -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check ilp
	$(BIN)/mypy ilp links receivers payments interledger_site

worker: install
	$(BIN)/celery -A interledger_site worker -l info

interop: install
	bash scripts/interop.sh

# kill -9 the node mid-load, restart, check nothing was lost (DATABASE_URL/REDIS_URL as set).
faults: install
	bash scripts/faults.sh

# The production shape on loopback (docs/DEPLOY.md): nginx, N Daphnes (CLUSTER_DAPHNES=3),
# a Celery worker and beat, PostgreSQL + Redis.
cluster: install
	bash scripts/cluster.sh start

cluster-stop:
	bash scripts/cluster.sh stop

cluster-status:
	bash scripts/cluster.sh status

cluster-interop: install
	bash scripts/cluster.sh interop

# Multi-process checks on clusters of their own (scripts/cluster_checks.py; needs DATABASE_URL
# on PostgreSQL and REDIS_URL): a tight credit limit under load from 3 Daphnes, then kill -9 of
# one Daphne mid-load.
cluster-checks: install
	$(BIN)/python scripts/cluster_checks.py credit
	$(BIN)/python scripts/cluster_checks.py kill

# Node vs the JS reference, same run, per shape (scripts/bench.sh): BENCH_SHAPE=both|embedded|postgres
# (postgres starts its own Postgres + Redis + a Celery worker), BENCH_N=10000, BENCH_C=50,
# BENCH_PROFILE=1 (py-spy + pg_stat_statements). Under the interop lock: fixed ports.
bench: install
	flock -o /tmp/interop.lock bash scripts/bench.sh

# The cluster shape (nginx + CLUSTER_DAPHNES=3 Daphnes, worker, Postgres + Redis of its own) with
# one BTP link per Daphne next to one link, same run; CPU per payment per process and the
# projection to 8 cores (scripts/bench_cluster.py: BENCH_N per link, BENCH_C, BENCH_ROUNDS).
bench-cluster: install
	flock -o /tmp/interop.lock $(BIN)/python scripts/bench_cluster.py

# RSS, gc counts by type (and with BENCH_TRACE=1 tracemalloc by line) of one Daphne after each
# 10,000 of 100,000 payments (scripts/bench_memory.py); BENCH_SHAPE=embedded|postgres.
bench-memory: install
	flock -o /tmp/interop.lock $(BIN)/python scripts/bench_memory.py --shape $${BENCH_SHAPE:-embedded} $$([ "$${BENCH_TRACE:-0}" = 1 ] && echo --trace)

bench-codec: install
	$(BIN)/python -m ilp.bench

clean:
	rm -rf $(VENV) var .interop .faults build
	rm -f ilp/*.so ilp/_codec_build.json
