#!/usr/bin/env bash
# Installs the real MTAs the harness can stand in for a lab server (Debian packages), without letting
# their packages start a system-wide instance: the harness runs each one itself, inside the lab's
# network namespaces. Needs root and apt; elsewhere it says why and the real-MTA tests are skipped.
#
# Postfix is installed as a package. Exim 4 and OpenSMTPD cannot be: Debian's MTAs conflict with one
# another (one mail-transport-agent per system), so their packages are unpacked into tools/mtas/root
# instead, and the harness runs their binaries from there in a private mount namespace that puts their
# configuration, spool and helper programs where the binaries expect them. Only what their maintainer
# scripts would make on the system is made here: their users, and the libraries they link against.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
mtas="$here/tools/mtas"
unpacked=(exim4-base exim4-daemon-light opensmtpd)
# Installed without recommends, so what the harness and the tests use is named here: swaks's TLS
# (libnet-ssleay-perl, libio-socket-ssl-perl: `swaks --tls` exits 10 without them), iproute2 for the
# lab's network namespaces, adduser for the MTAs' users and acl (below), none of which a minimal
# Debian has.
packages=(postfix dovecot-core libidn12 libevent-2.1-7 libdb5.3 libgnutls-dane0 libpcre2-8-0 libnsl2 libssl3 tcpdump
  swaks libnet-ssleay-perl libio-socket-ssl-perl iproute2 adduser acl)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
unpack_done() { [ -x "$mtas/root/usr/sbin/exim4" ] && [ -x "$mtas/root/usr/sbin/smtpd" ]; }
users_done() { getent passwd Debian-exim opensmtpd opensmtpq >/dev/null && [ -d /etc/exim4 ]; }
# Exim runs as Debian-exim and re-executes its binary from tools/mtas/root, so that user must be able
# to reach it; a checkout in a home folder of mode 0700 (/root, or any home made by Debian 12's
# adduser) stops it, and Exim then accepts mail but never delivers it.
exim="$mtas/root/usr/sbin/exim4"
as_exim() { setpriv --reuid Debian-exim --regid Debian-exim --clear-groups "$@" 2>/dev/null; }
reach_done() { as_exim test -x "$exim"; }
[ ${#missing[@]} -eq 0 ] && unpack_done && users_done && reach_done && exit 0

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
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
fi
if [ $status -eq 0 ] && ! unpack_done; then
  rm -rf "$mtas" && mkdir -p "$mtas/debs" "$mtas/root"
  if ! apt-cache policy "${unpacked[@]}" | grep -q "Candidate: [0-9]"; then apt-get update -qq || status=$?; fi
  # apt's sandbox user cannot write into the checkout; the download is of public Debian packages.
  (cd "$mtas/debs" && apt-get download -qq -o APT::Sandbox::User=root "${unpacked[@]}" >/dev/null) || status=$?
  for deb in "$mtas"/debs/*.deb; do dpkg-deb -x "$deb" "$mtas/root" || status=$?; done
fi
if [ $status -eq 0 ] && ! users_done; then
  # As the packages' postinst scripts make them.
  getent passwd Debian-exim >/dev/null || adduser --system --group --quiet --home /var/spool/exim4 \
    --no-create-home --disabled-login --force-badname Debian-exim || status=$?
  # The folder the unpacked Exim's configuration is mounted on (the path compiled into its binary).
  mkdir -p /etc/exim4 || status=$?
  for name in opensmtpd opensmtpq; do
    getent group "$name" >/dev/null || addgroup --system --quiet "$name" || status=$?
    getent passwd "$name" >/dev/null || adduser --system --quiet --home /var/lib/opensmtpd/empty \
      --no-create-home --disabled-password --ingroup "$name" "$name" || status=$?
  done
fi

if [ $status -eq 0 ] && ! reach_done; then
  # Search permission for that user alone (an ACL entry), on each folder above the binary that
  # refuses it; nothing else about the folders changes.
  path=/
  while IFS= read -r part; do
    [ -n "$part" ] || continue
    path="${path%/}/$part"
    if ! as_exim test -x "$path"; then
      setfacl -m u:Debian-exim:x "$path" || status=$?
      echo "install_mtas: gave Debian-exim search permission on $path (an ACL entry) so that Exim can run from $mtas" >&2
    fi
  done < <(dirname "$exim" | tr / '\n')
fi

[ $had_policy -eq 0 ] && rm -f "$policy"
if [ $status -ne 0 ]; then
  echo "install_mtas: a step failed (exit $status): the real-MTA tests will be skipped" >&2
fi
exit 0
