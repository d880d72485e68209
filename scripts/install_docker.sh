#!/usr/bin/env bash
# What the Docker backend needs on this machine: Debian's docker.io (the engine and its client),
# mmdebstrap (the lab's images are built from Debian's packages, no registry: `mailflow images build`)
# and docker-compose (to start a lab exported with `mailflow lab export --compose`); then a Docker
# engine that answers: when none does, `dockerd --iptables=false --bridge=none` is started in the
# background (its own session, outliving this script; log /var/log/mailflow-dockerd.log). Without
# iptables rules and without the default bridge, the engine gives a container no route out: the lab's
# own internal networks are the only ones its containers join.
#
# Needs root and apt; elsewhere it says what is missing and exits 0, and the Docker tests are skipped.
set -uo pipefail

packages=(docker.io mmdebstrap docker-compose)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  if [ ${#missing[@]} -gt 0 ] || ! docker info >/dev/null 2>&1; then
    echo "install_docker: not root or no apt-get: ${missing[*]:-a running Docker engine} missing; the Docker tests will be skipped" >&2
  fi
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  if ! apt-cache policy "${missing[@]}" | grep -q "Candidate: [0-9]"; then
    apt-get update -qq || exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit 1
fi
docker info >/dev/null 2>&1 && exit 0

log=/var/log/mailflow-dockerd.log
echo "install_docker: no Docker engine answers: starting dockerd --iptables=false --bridge=none (log: $log)"
setsid dockerd --iptables=false --bridge=none </dev/null >>"$log" 2>&1 &
deadline=$((SECONDS + 60))
until docker info >/dev/null 2>&1; do
  if [ $SECONDS -ge $deadline ]; then
    echo "install_docker: dockerd did not answer within 60 s; its log, $log, ends with:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  sleep 0.5
done
