# The README's two commands: `make conformance` (the main job) and `make test`.
# Both create the virtual environment and install what they need on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPORTS ?= reports
WORKERS ?= auto

.PHONY: conformance test lint typecheck unit report clean mtas matrix fresh-check images docker-gate

# Debian ships venv's pip bootstrap (ensurepip) apart, in python3-venv, which a stock install lacks:
# as root it is installed here, otherwise make stops and says what to install.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python >= 3.11" >&2; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "make: mailflow needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 2; }
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
		if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
			echo "make: $(PYTHON) -m venv needs ensurepip: installing python3-venv"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				python3-venv >/dev/null || exit 2; \
		else \
			echo "make: $(PYTHON) -m venv cannot work: ensurepip is missing. Install it (on Debian and Ubuntu: sudo apt-get install python3-venv) and run make again." >&2; \
			exit 2; \
		fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Replay the whole traces/ corpus against the embedded lab, write the Allure results and HTML report.
conformance: $(STAMP)
	@status=0; $(BIN)/mailflow run traces/ -n $(WORKERS) --reports $(REPORTS) || status=$$?; \
	scripts/allure_report.sh $(REPORTS)/allure-results $(REPORTS)/allure-report || status=$${status:-1}; \
	exit $$status

## Lint, type-check and run the test suite (unit tests and the trace corpus).
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) mtas
	$(BIN)/pytest -n $(WORKERS) tests traces

## The real MTAs a lab server can be stood in for (Debian packages; needs root, else their tests skip).
mtas:
	scripts/install_mtas.sh

## The conformance matrix: the corpus on the reference MTA and on each real MTA standing in for EX1
## (reports/matrix.md and .html), and one Allure report of every run, the target as a label.
matrix: $(STAMP) mtas
	@status=0; $(BIN)/mailflow matrix --target reference --target postfix --target exim --target opensmtpd \
		-n $(WORKERS) --reports $(REPORTS) traces/ || status=$$?; \
	scripts/allure_report.sh $(REPORTS)/allure-results $(REPORTS)/allure-report || status=$${status:-1}; \
	exit $$status

## The Docker backend's images, built from Debian packages (docs/docker.md); unchanged ones are kept.
images: $(STAMP)
	$(BIN)/mailflow images build

## The Docker backend's gate: the inbound, relay and gateway traces with every lab host in a container,
## and the relay traces with Postfix standing in for EX1 in a container of its own.
docker-gate: $(STAMP) images
	$(BIN)/mailflow run --backend docker -n $(WORKERS) --reports $(REPORTS)/docker traces/inbound traces/relay traces/gateway
	$(BIN)/mailflow run --backend docker --target postfix -n $(WORKERS) --reports $(REPORTS)/docker-postfix traces/relay

report:
	scripts/allure_report.sh $(REPORTS)/allure-results $(REPORTS)/allure-report

## The README's two commands on a fresh Debian bookworm, in a container, from the committed HEAD
## (needs root; installs Docker and mmdebstrap if missing; the log goes to reports/fresh-check/).
fresh-check:
	scripts/fresh_check.sh

clean:
	rm -rf $(VENV) $(REPORTS)/allure-results $(REPORTS)/allure-report $(REPORTS)/last-run.json

## The coverage gates: on the reference MTA every seed ID shown by 3 passing traces and bounded by 1;
## on Postfix every black-box ID of the inbound and relay flows shown by 2 (scripts/coverage_gate.sh).
.PHONY: coverage-gate
coverage-gate: $(STAMP) mtas
	VENV=$(VENV) scripts/coverage_gate.sh $(REPORTS)/coverage $(WORKERS)
