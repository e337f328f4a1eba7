# featurestream developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV  := .venv
STAMP := $(VENV)/.installed
KAFKA := deploy/kafka
# python3.11 if it really runs (a pyenv shim may exist without the version), else python3.
PYTHON ?= $(shell for p in python3.11 python3; do $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: help venv kafka-fetch promtool-fetch kafka-start kafka-stop s3-start s3-stop lint test faults-long peers demo clean

help:
	@echo "make venv         create $(VENV) from requirements.lock and install the package (editable, --no-deps)"
	@echo "make kafka-fetch  fetch the Kafka 3.9.1 jars from Maven Central into \$${FEATURESTREAM_CACHE:-~/.cache/featurestream}"
	@echo "make promtool-fetch  fetch promtool (Debian package prometheus) for the Prometheus config test"
	@echo "make kafka-start  start a local KRaft broker on 127.0.0.1:\$${KAFKA_PORT:-9092} (data in .run/)"
	@echo "make kafka-stop   stop it (KAFKA_PORT as for start)"
	@echo "make s3-start     start a local S3-API server (S3Proxy) on 127.0.0.1:\$${S3PROXY_PORT:-9000}, bucket featurestream"
	@echo "make s3-stop      stop it (S3PROXY_PORT as for start)"
	@echo "make lint         ruff + import-linter contracts"
	@echo "make test         lint, then pytest (the tests start their own broker)"
	@echo "make faults-long  the fault suite (tests/e2e) in long mode: more events and kills"
	@echo "make peers        benchmarks/peers: Quix Streams, Feast, storey, pandas side by side (not in test)"
	@echo "make demo         run deploy/demo.sh"
	@echo "make clean        stop brokers under .run/ and delete .run/"

venv: $(STAMP)

# Rebuilt only when the lock or the project metadata change; a failed install leaves no stamp.
$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: neither python3.11 nor python3 runs" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.lock
	$(VENV)/bin/pip install --no-deps -e .
	touch $@

kafka-fetch:
	$(KAFKA)/fetch.sh >/dev/null

# Best effort: the Prometheus config test skips (and says so) without promtool.
promtool-fetch:
	-@deploy/prometheus/fetch-promtool.sh >/dev/null

kafka-start:
	$(KAFKA)/start.sh

kafka-stop:
	$(KAFKA)/stop.sh

s3-start:
	deploy/s3proxy/start.sh

s3-stop:
	deploy/s3proxy/stop.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected no tests: that is a failure here, not a pass. Each test has its own
# timeout (pyproject); the whole run is capped at 40 minutes so a hang can never eat CI's budget.
test: venv kafka-fetch promtool-fetch
	$(MAKE) --no-print-directory lint
	@rc=0; timeout -s TERM 2400 $(VENV)/bin/pytest -q --durations=10 tests || rc=$$?; \
	if [ $$rc -eq 124 ]; then echo "error: the test run exceeded 40 minutes" >&2; fi; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo:
	deploy/demo.sh

clean:
	@for pid in .run/kafka-*/kafka.pid; do \
		[ -e "$$pid" ] && $(KAFKA)/stop.sh --data-dir "$$(dirname "$$pid")" || true; \
	done
	@for pid in .run/s3proxy-*/s3proxy.pid; do \
		[ -e "$$pid" ] && deploy/s3proxy/stop.sh --data-dir "$$(dirname "$$pid")" || true; \
	done
	rm -rf .run
peers: ; benchmarks/peers/run.sh $(PEERS_ARGS)

faults-long: venv kafka-fetch
	FEATURESTREAM_E2E_LONG=1 $(VENV)/bin/pytest -q tests/e2e
