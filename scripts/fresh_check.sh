#!/usr/bin/env bash
# The fresh-machine proof: the README's two commands, `make conformance` then `make test`, run on a
# clean Debian bookworm in a container, from the committed HEAD (never the uncommitted work tree).
#
# usage: scripts/fresh_check.sh        (or `make fresh-check`; needs root)
#
# - Installs Debian's docker.io and mmdebstrap when missing and starts `dockerd --iptables=false
#   --bridge=none` when no Docker engine answers (stopped again at the end). Nothing is ever pulled from a registry.
# - The fresh machine is built with mmdebstrap: Debian's minimal base system plus FRESH_PACKAGES
#   below, from the Debian mirror the host's apt uses, imported as the image mailflow-fresh:<key>,
#   where <key> is a hash of the suite, the variant and the package list. A second run reuses it;
#   changing the list builds a new one (and removes the old).
# - The container shares the host's network (`--network host`, so it reaches the package registries
#   as the host does) and is privileged (the real-MTA tests make network namespaces). The host's pip
#   and npm configuration (their files and PIP_* / npm_config_* variables) and the local files it
#   names (certificate bundles, wheel folders, file:// indexes) are carried in, read-only, as are
#   the host's apt proxy and validity settings.
# - Sharing the host's loopback, the container's labs are moved to MAILFLOW_LAB_BASE=127.200.0.0 and
#   MAILFLOW_NETNS_SUBNET=40 (change with FRESH_CHECK_LAB_BASE / FRESH_CHECK_NETNS_SUBNET), clear of
#   a run on the host with the defaults. Do not run two fresh checks at once.
# - Prints each command's exit code and duration and a verdict; exits 1 if either command failed,
#   3 if the check itself could not run. The container's full output is kept in
#   reports/fresh-check/fresh-check-<time>.log.
# - Removes its container, the lab bridges it left in the shared network and its temporary files on
#   exit, Ctrl-C and SIGTERM.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
suite=bookworm
variant=minbase
# What a fresh Debian machine holds besides the minimal base system: the README's prerequisite
# (Python >= 3.11; bookworm's python3 is 3.11), git (the user cloned the repository), make (the
# README's commands are make targets) and the CA certificates every Debian install has.
FRESH_PACKAGES=(python3 git make ca-certificates)
# The container shares the host's loopback and network namespace. Its loopback labs move to 127.200
# and up (one second octet per worker); its namespace labs to 198.18.40 and up: the real-MTA test
# modules add their bands (110, 150, 170, plus the worker) to it, so it must stay below 76, and 40
# keeps every band clear of a host run with the default 10 and of tests/test_lab_netns.py's 200.
lab_base=${FRESH_CHECK_LAB_BASE:-127.200.0.0}
netns_subnet=${FRESH_CHECK_NETNS_SUBNET:-40}
label=org.mailflow.fresh-check.pid
workdir=/root/mailflow

# The terminal's streams, kept: a trap runs with the redirections of the command it interrupts, and
# its words must not end up in the container's log.
exec 3>&1 4>&2
say() { printf 'fresh-check: %s\n' "$*" >&3; }
broken() {
    printf 'fresh-check: %s\n' "$*" >&4
    exit 3
}

[ "$(id -u)" -eq 0 ] || broken "needs root (it installs Docker, builds a Debian root with mmdebstrap and runs a privileged container)"
command -v apt-get >/dev/null || broken "needs a Debian host with apt-get"

tmp=$(mktemp -d /tmp/mailflow-fresh-check.XXXXXX)
container=
dockerd_pid=
child=
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi
    if [ -n "$container" ]; then remove_container "$container"; fi
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    rm -rf -- "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# Runs "$@" as a background child and waits for it, so that INT and TERM are handled at once and
# not only when a command of ten minutes ends.
run_child() {
    "$@" &
    child=$!
    local status=0
    wait "$child" || status=$?
    child=
    return "$status"
}

# The container's labs use bridges in the host's network namespace (the container shares it). The
# harness removes them itself, but not when its processes are killed; their names are in the
# container's /run/mailflow, which outlives its processes.
remove_container() {
    docker kill "$1" >/dev/null 2>&1 || true
    local link
    for link in $(docker cp "$1:/run/mailflow" - 2>/dev/null | tar -xO 2>/dev/null | grep -o '"mf[0-9a-f]\{4\}[a-z0-9]*"' | tr -d '"' | sort -u); do
        ip link del "$link" 2>/dev/null || true
    done
    docker rm -f "$1" >/dev/null 2>&1 || true
}

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# --- Docker and mmdebstrap ---------------------------------------------------------------------
missing=()
command -v docker >/dev/null && command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq || broken "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        broken "apt-get install ${missing[*]} failed"
fi

if ! docker info >/dev/null 2>&1; then
    dockerd_log=/var/log/mailflow-fresh-check-dockerd.log
    say "no Docker engine answers: starting dockerd --iptables=false --bridge=none (log: $dockerd_log)"
    # Its own session keeps Ctrl-C on the terminal from reaching it before the clean-up has used it.
    # No bridge: the container uses the host's network, and docker0 would put an address outside the
    # lab's ranges on the host.
    setsid dockerd --iptables=false --bridge=none </dev/null >>"$dockerd_log" 2>&1 &
    dockerd_pid=$!
    deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        kill -0 "$dockerd_pid" 2>/dev/null || { dockerd_pid=; broken "dockerd exited; see $dockerd_log"; }
        [ $SECONDS -lt $deadline ] || broken "dockerd did not answer within 60 s; see $dockerd_log"
        sleep 0.5
    done
fi

# Containers of a check that was killed outright (kill -9) are removed by the next one.
for stale in $(docker ps -aq --filter "label=$label"); do
    pid=$(docker inspect -f "{{index .Config.Labels \"$label\"}}" "$stale" 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then remove_container "$stale"; fi
done

# --- the host's registries -----------------------------------------------------------------------
# The Debian archives the host's apt uses (origin Debian: the main archive, updates and security),
# read from its configuration at run time.
debian_sources() {
    # shellcheck disable=SC2016 # apt-get's own $(FIELD) format, not the shell's
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Origin: Debian' 'Identifier: Packages' 2>/dev/null |
        awk -v suite="$suite" '$2 ~ "^" suite "(-|$)" { comps[$1 " " $2] = comps[$1 " " $2] " " $3 }
            END { for (k in comps) print "deb " k comps[k] }' | sort
}
sources=$(debian_sources)
if [ -z "$sources" ]; then
    apt-get update -qq || broken "apt-get update failed"
    sources=$(debian_sources)
fi
[ -n "$sources" ] || broken "the host's apt has no Debian $suite archive: cannot build a $suite machine"
printf '%s\n' "$sources" >"$tmp/sources.list"
# The host's apt proxies and its settings for archives whose Release files have expired (snapshots).
apt-config dump | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date) ' >"$tmp/apt.conf" || true

mounts=()
declare -A mounted=()
mount_ro() {
    local host=$1 inside=${2:-$1}
    [ -e "$host" ] && [ -z "${mounted[$inside]:-}" ] || return 0
    mounted[$inside]=1
    mounts+=(--mount "type=bind,source=$host,target=$inside,readonly")
}
# Local paths a pip or npm setting names: a certificate bundle, a wheel folder, a file:// index (with
# its parent: a PEP 503 index links to its files with relative URLs such as ../../files/x.whl).
mount_named_paths() {
    local value path
    grep -ohE '(/|file://)[^[:space:]"]+' "$@" 2>/dev/null | sort -u >"$tmp/paths" || true
    while IFS= read -r value; do
        path=${value#file://}
        [ -e "$path" ] || continue
        case $value in file://*) path=$(dirname "$path") ;; esac
        # A setting such as npm's nodedir=/usr names the system itself, not something to carry.
        if [ -d "$path" ]; then
            case $path in / | /etc | /etc/* | /usr | /usr/* | /var | /var/* | /root | /home | /bin | /sbin | /lib* | \
                /proc* | /sys* | /dev* | /run* | /tmp) continue ;; esac
        fi
        mount_ro "$path"
    done <"$tmp/paths"
}
envs=()
: >"$tmp/settings"
while IFS='=' read -r name _; do
    case ${name,,} in
        pip_* | npm_config_* | node_extra_ca_certs)
            envs+=(-e "$name")
            printenv "$name" >>"$tmp/settings"
            ;;
    esac
done < <(env)
config_files=()
for file in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/npmrc /usr/etc/npmrc "${PIP_CONFIG_FILE:-}" \
    "${NPM_CONFIG_GLOBALCONFIG:-}" "${npm_config_globalconfig:-}"; do
    [ -n "$file" ] && [ -f "$file" ] && mount_ro "$file" && config_files+=("$file")
done
for file in .pip/pip.conf .config/pip/pip.conf .npmrc; do
    [ -f "$HOME/$file" ] && mount_ro "$HOME/$file" "/root/$file" && config_files+=("$HOME/$file")
done
mount_named_paths "$tmp/settings" "${config_files[@]}"

# --- the fresh machine -------------------------------------------------------------------------
# Raised when the way the image is built changes, so that a cached one is built again.
recipe=2
key=$(printf '%s\n' "$recipe" "$suite" "$variant" "${FRESH_PACKAGES[@]}" | sha256sum | cut -c1-12)
image=mailflow-fresh:$key
bootstrap_took=0
if docker image inspect "$image" >/dev/null 2>&1; then
    say "base image $image (Debian $suite $variant + ${FRESH_PACKAGES[*]}) is cached"
else
    say "building the base image $image: Debian $suite $variant + ${FRESH_PACKAGES[*]}"
    began=$SECONDS
    aptopts=()
    while IFS= read -r line; do aptopts+=(--aptopt="$line"); done <"$tmp/apt.conf"
    mapfile -t mirrors <"$tmp/sources.list"
    # Lines (not a file) as mirrors: mmdebstrap writes them to /etc/apt/sources.list, which each run
    # then replaces with the host's current ones.
    run_child mmdebstrap --quiet --variant="$variant" --include="$(IFS=,; echo "${FRESH_PACKAGES[*]}")" \
        "${aptopts[@]}" "$suite" "$tmp/base.tar" "${mirrors[@]}" >"$tmp/mmdebstrap.log" 2>&1 ||
        { cat "$tmp/mmdebstrap.log" >&2; broken "mmdebstrap failed"; }
    run_child docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' "$tmp/base.tar" "$image" >/dev/null || broken "docker import failed"
    rm -f "$tmp/base.tar"
    for old in $(docker images --format '{{.Repository}}:{{.Tag}}' mailflow-fresh); do
        [ "$old" = "$image" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
    bootstrap_took=$((SECONDS - began))
    say "base image built in $(elapsed $bootstrap_took)"
fi

# --- the checkout: the committed HEAD, as a user's clone -----------------------------------------
head=$(git -C "$root" rev-parse HEAD)
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
    say "note: uncommitted changes are not part of the check; it runs HEAD ${head:0:12}"
fi
git clone --quiet --no-hardlinks --no-checkout "$root" "$tmp/mailflow"
git -C "$tmp/mailflow" checkout --quiet --detach "$head"

# --privileged asks for every capability the kernel knows; where this host's own bounding set lacks
# some (a sandbox without CAP_SYS_RESOURCE, say), runc cannot grant them and the container does not
# start. There the container gets what --privileged gives less those capabilities.
privileges() {
    # Capability names by number, as in linux/capability.h (capsh, which knows them, is not on every host).
    local names=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable
        net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot
        sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease
        audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read
        perfmon bpf checkpoint_restore)
    local last bounding cap drops=()
    privileged=()
    last=$(cat /proc/sys/kernel/cap_last_cap)
    bounding=$((16#$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)))
    for ((cap = 0; cap <= last && cap < ${#names[@]}; cap++)); do
        (((bounding >> cap) & 1)) || drops+=(--cap-drop "${names[cap]^^}")
    done
    if [ ${#drops[@]} -eq 0 ]; then
        privileged=(--privileged)
    else
        privileged=(--cap-add ALL "${drops[@]}" --security-opt seccomp=unconfined --security-opt apparmor=unconfined
            --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm')
    fi
}
privileges

mkdir -p "$root/reports/fresh-check"
log=$root/reports/fresh-check/fresh-check-$(date -u +%Y%m%dT%H%M%SZ).log
container=mailflow-fresh-check-$$
docker create --pull never --name "$container" --label "$label=$$" --init --network host "${privileged[@]}" \
    -e MAILFLOW_LAB_BASE="$lab_base" -e MAILFLOW_NETNS_SUBNET="$netns_subnet" \
    -e PYTEST_ADDOPTS=-rs "${envs[@]}" "${mounts[@]}" -w "$workdir" "$image" sleep infinity >/dev/null ||
    broken "docker create failed"
docker cp "$tmp/sources.list" "$container:/etc/apt/sources.list" >/dev/null
[ -s "$tmp/apt.conf" ] && docker cp "$tmp/apt.conf" "$container:/etc/apt/apt.conf.d/90host" >/dev/null
docker cp "$tmp/mailflow/." "$container:$workdir" >/dev/null
docker start "$container" >/dev/null || broken "docker start failed"

{
    echo "fresh-check of mailflow ${head} on Debian $suite $variant + ${FRESH_PACKAGES[*]} ($image)"
    echo "MAILFLOW_LAB_BASE=$lab_base MAILFLOW_NETNS_SUBNET=$netns_subnet"
} >"$log"
docker exec "$container" dpkg-query -W -f '${Package}\n' | sort >"$tmp/packages-before"
say "HEAD ${head:0:12} in container $container; full output: $log"

results=()
failed=0
# Before the README's commands install python3-venv: a user without root is told what to install.
docker exec "$container" sh -c "mkdir /tmp/user && cp Makefile pyproject.toml /tmp/user && chmod -R a+rwX /tmp/user"
status=0
docker exec --user nobody -w /tmp/user "$container" make conformance >"$tmp/user.out" 2>&1 || status=$?
{
    echo "#### fresh-check: make, as a user without root, before python3-venv is installed"
    cat "$tmp/user.out"
    echo "#### fresh-check: exit $status"
} >>"$log"
if [ "$status" -eq 2 ] && grep -q 'apt-get install python3-venv' "$tmp/user.out"; then
    say "make without root and without python3-venv: exit 2, says to install python3-venv"
else
    say "make without root and without python3-venv: exit $status, expected 2 and a word on python3-venv:"
    sed 's/^/    | /' "$tmp/user.out"
    failed=1
fi
results+=("make without root: exit $status")

for command in "make conformance" "make test"; do
    say "running: $command"
    printf '\n#### fresh-check: %s (%s)\n' "$command" "$(date -u +%H:%M:%SZ)" >>"$log"
    began=$SECONDS
    status=0
    # shellcheck disable=SC2086 # the command's words
    run_child docker exec "$container" $command >>"$log" 2>&1 || status=$?
    took=$((SECONDS - began))
    printf '#### fresh-check: %s: exit %d in %s\n' "$command" "$status" "$(elapsed $took)" >>"$log"
    # The command's last lines: the run's or pytest's summary, the report's path.
    sed -n '/^#### fresh-check: '"$command"' (/,$p' "$log" | grep -v '^#### fresh-check' | tail -n 4 | sed 's/^/    | /'
    say "$command: exit $status in $(elapsed $took)"
    results+=("$command: exit $status in $(elapsed $took)")
    [ "$status" -eq 0 ] || failed=1
done

docker exec "$container" dpkg-query -W -f '${Package}\n' | sort >"$tmp/packages-after"
added=$(comm -13 "$tmp/packages-before" "$tmp/packages-after" | tr '\n' ' ')
python_packages=$(docker exec "$container" "$workdir/.venv/bin/pip" list --format=freeze 2>/dev/null | grep -c . || true)
{
    echo
    echo "Debian packages the two commands installed ($(comm -13 "$tmp/packages-before" "$tmp/packages-after" | grep -c . || true)): $added"
    echo "Python packages in .venv: $python_packages"
} >>"$log"
say "the commands installed $(comm -13 "$tmp/packages-before" "$tmp/packages-after" | grep -c . || true) Debian packages and $python_packages Python packages (list in the log)"

[ $bootstrap_took -eq 0 ] || results=("bootstrap: $(elapsed $bootstrap_took)" "${results[@]}")
if [ $failed -eq 0 ]; then verdict=PASS; else verdict=FAIL; fi
printf '%s\n' "" "${results[@]}" "fresh-check: $verdict" >>"$log"
summary=$(printf '%s; ' "${results[@]}")
say "$verdict: ${summary%; } (log: $log)"
exit $failed
