# The README's two commands: `make conformance` (the main job) and `make test`.
# Both create the virtual environment and install what they need on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPORTS ?= reports
WORKERS ?= auto

.PHONY: conformance test lint typecheck unit report clean mtas matrix

$(STAMP): pyproject.toml
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

report:
	scripts/allure_report.sh $(REPORTS)/allure-results $(REPORTS)/allure-report

clean:
	rm -rf $(VENV) $(REPORTS)/allure-results $(REPORTS)/allure-report $(REPORTS)/last-run.json
