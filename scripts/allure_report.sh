#!/usr/bin/env bash
# Render allure-pytest results as a static HTML report with the Allure 3 CLI
# (npm package "allure", needs Node.js >= 20), pinned in tools/allure/.
#
# usage: scripts/allure_report.sh RESULTS_DIR REPORT_DIR
#
# - Node.js missing or older than 20: prints one line and exits 0 (the HTML
#   report is optional; the raw results stay in RESULTS_DIR).
# - Installs the pinned CLI with `npm ci` into tools/allure/node_modules when
#   that is missing or older than tools/allure/package-lock.json.
# - Settings (report name "mailflow conformance", single-file report, tree by
#   epic/feature/story) are in tools/allure/allurerc.mjs, always passed with
#   --config so that no allurerc.* in the current directory is picked up.
# - Allure 3 never cleans its output directory, so the report is generated into
#   a fresh directory beside REPORT_DIR which then replaces REPORT_DIR whole;
#   a failed generation leaves the previous report untouched.
# - On success prints the absolute path of REPORT_DIR/index.html. The report is
#   a single self-contained file: it opens straight from disk (file://).
# - On failure exits non-zero and shows the output of npm or the generator.
set -euo pipefail

usage() {
    echo "usage: $0 RESULTS_DIR REPORT_DIR" >&2
    exit 2
}
die() {
    echo "allure_report.sh: $*" >&2
    exit 2
}

[ "$#" -eq 2 ] || usage
results_arg=$1
report_arg=$2
if [ -z "$results_arg" ] || [ -z "$report_arg" ]; then usage; fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
tools_dir=$root/tools/allure
config=$tools_dir/allurerc.mjs
cli=$tools_dir/node_modules/allure/cli.js

# --- paths -------------------------------------------------------------------
[ -d "$results_arg" ] || die "results directory not found: $results_arg"
results_dir=$(cd "$results_arg" && pwd -P)
# The Allure 3 CLI takes results directories as glob patterns and offers no way
# to escape them, so a path with glob characters would not match itself.
glob_chars='[]*?{}()'\\
case $results_dir in
    *["$glob_chars"]*) die "results directory path contains glob characters, which the Allure 3 CLI cannot take: $results_dir" ;;
esac

report_arg=${report_arg%"${report_arg##*[!/]}"} # strip trailing slashes
[ -n "$report_arg" ] || die "refusing to use / as the report directory"
report_name=$(basename -- "$report_arg")
case $report_name in
    . | ..) die "refusing to use $2 as the report directory: name a directory of its own" ;;
esac
report_parent_arg=$(dirname -- "$report_arg")
mkdir -p -- "$report_parent_arg"
report_parent=$(cd "$report_parent_arg" && pwd -P)
report_dir=${report_parent%/}/$report_name

case $results_dir/ in
    "$report_dir"/*) die "report directory $report_dir would contain or replace the results directory $results_dir" ;;
esac
case $report_dir/ in
    "$results_dir"/*) die "report directory $report_dir must not be inside the results directory $results_dir" ;;
    "$root"/ | "$root"/tools/* | "$root"/scripts/*) die "refusing to replace $report_dir with a report" ;;
esac
case $root/ in
    "$report_dir"/*) die "refusing to replace $report_dir (it contains the project) with a report" ;;
esac
if [ -d "$report_dir" ] && [ -n "$(ls -A -- "$report_dir")" ] && [ ! -f "$report_dir/index.html" ]; then
    die "$report_dir exists, is not empty and holds no index.html: not replacing it with a report"
fi
[ ! -e "$report_dir" ] || [ -d "$report_dir" ] || die "$report_dir exists and is not a directory"

# --- Node.js -------------------------------------------------------------------
skip() {
    echo "allure HTML report skipped: $1; results are in $results_arg"
    exit 0
}
command -v node >/dev/null 2>&1 || skip "Node.js >= 20 not found"
node_major=$(node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || true)
case $node_major in
    '' | *[!0-9]*) skip "Node.js >= 20 not found" ;;
esac
[ "$node_major" -ge 20 ] || skip "Node.js >= 20 not found (node is $(node --version 2>/dev/null))"

tmp_log=$(mktemp)
tmp_out=
cleanup() {
    rm -f -- "$tmp_log"
    if [ -n "$tmp_out" ]; then rm -rf -- "$tmp_out"; fi
}
trap cleanup EXIT

# --- install the pinned CLI --------------------------------------------------------
# npm rewrites node_modules/.package-lock.json on every install: it is the stamp.
stamp=$tools_dir/node_modules/.package-lock.json
if [ ! -f "$cli" ] || [ ! -f "$stamp" ] || [ "$tools_dir/package-lock.json" -nt "$stamp" ]; then
    command -v npm >/dev/null 2>&1 || skip "npm not found (needed once to install tools/allure)"
    # --loglevel=error rather than --silent: --silent hides npm's error messages too.
    if ! npm ci --prefix "$tools_dir" --no-audit --no-fund --ignore-scripts --loglevel=error >"$tmp_log" 2>&1; then
        cat -- "$tmp_log" >&2
        echo "allure_report.sh: npm ci --prefix tools/allure failed" >&2
        exit 1
    fi
    [ -f "$cli" ] || { cat -- "$tmp_log" >&2; echo "allure_report.sh: npm ci did not install $cli" >&2; exit 1; }
fi

# --- generate ------------------------------------------------------------------------
if ! compgen -G "$results_dir/*-result.json" >/dev/null; then
    echo "allure_report.sh: note: no *-result.json in $results_arg; the report will be empty" >&2
fi

tmp_out=$(mktemp -d "$report_parent/.$report_name.tmp.XXXXXX")
status=0
(
    cd "$root"
    NO_COLOR=1 exec node "$cli" generate "$results_dir" --config "$config" --output "$tmp_out"
) >"$tmp_log" 2>&1 || status=$?
if [ "$status" -ne 0 ] || [ ! -f "$tmp_out/index.html" ]; then
    cat -- "$tmp_log" >&2
    echo "allure_report.sh: allure generate failed (exit $status); $report_dir left as it was" >&2
    [ "$status" -ne 0 ] || status=1
    exit "$status"
fi
# Anything the generator said on success (warnings about unreadable files...).
if [ -s "$tmp_log" ]; then cat -- "$tmp_log" >&2; fi

chmod "$(umask -S)" "$tmp_out" # mktemp -d made it 0700
rm -rf -- "$report_dir"
mv -- "$tmp_out" "$report_dir"
tmp_out=
printf '%s\n' "$report_dir/index.html"
