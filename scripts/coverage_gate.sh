#!/usr/bin/env bash
# The coverage gates of the corpus, as `make coverage-gate` runs them:
#   1. the whole corpus on the reference MTA; every ID the seed documents describe is shown by at
#      least 3 passing traces and its boundary by at least 1;
#   2. the inbound and relay traces on Postfix standing in for EX1 (needs root and `make mtas`);
#      every black-box ID of the Inbound and of the Relay flow is shown by at least 2 passing traces.
#
# usage: scripts/coverage_gate.sh [REPORTS_DIR [WORKERS]]   (default: reports/coverage auto)
#
# A trace that fails is only a trace that does not count: the runs' exit 1 does not stop the gate, a
# 2 (invalid input) or 3 (broken lab) does. Each gate prints the IDs it finds short; the script runs
# them all and exits 1 if any is, else 0.
set -uo pipefail

reports=${1:-reports/coverage}
workers=${2:-auto}
bin=${VENV:-.venv}/bin

run() {  # run TARGET REPORTS PATHS...: a mailflow run whose failed traces are counted, not fatal
    local target=$1 out=$2
    shift 2
    "$bin/mailflow" run --target "$target" -n "$workers" --reports "$out" "$@"
    local status=$?
    if [ "$status" -gt 1 ]; then
        echo "coverage_gate.sh: mailflow run --target $target stopped with exit $status" >&2
        exit "$status"
    fi
}

status=0
gate() {  # gate ARGS...: one mailflow coverage gate; its exit 1 is remembered, anything worse stops
    echo "== mailflow coverage $*"
    "$bin/mailflow" coverage "$@" >/dev/null
    local code=$?
    if [ "$code" -eq 1 ]; then
        status=1
    elif [ "$code" -ne 0 ]; then
        exit "$code"
    fi
}

run reference "$reports/reference" traces/
gate traces/ --results "$reports/reference/last-run.json" --seed-ids --min 3 --min-boundary 1

run postfix "$reports/postfix" traces/inbound traces/relay
for flow in Inbound Relay; do
    gate traces/inbound traces/relay --results "$reports/postfix/last-run.json" --target postfix \
        --black-box --flow "$flow" --min 2
done
exit "$status"
