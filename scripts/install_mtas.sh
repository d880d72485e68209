#!/usr/bin/env bash
# Installs the real MTAs the harness can stand in for a lab server (Debian packages), without letting
# their packages start a system-wide instance: the harness runs each one itself, inside the lab's
# network namespaces. Needs root and apt; elsewhere it says why and the real-MTA tests are skipped.
set -uo pipefail

packages=(postfix dovecot-core)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_mtas: not root or no apt-get: ${missing[*]} not installed; the real-MTA tests will be skipped" >&2
  exit 0
fi

# A policy-rc.d that refuses every start keeps the packages' own services stopped during installation.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ $had_policy -eq 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

status=0
if ! apt-cache policy "${missing[@]}" | grep -q "Candidate: [0-9]"; then
  apt-get update -qq || status=$?
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?

[ $had_policy -eq 0 ] && rm -f "$policy"
if [ $status -ne 0 ]; then
  echo "install_mtas: apt-get failed (exit $status): the real-MTA tests will be skipped" >&2
fi
exit 0
