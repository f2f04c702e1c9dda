# shellcheck shell=bash
# Debian packages orgsync needs, and how to get them. Sourced by tests/run.sh,
# deploy/demo.sh and the benchmarks.
#
#   deps_ensure test|demo|bench
#
# As root, installs what is missing with apt-get; otherwise prints the apt-get
# line to run and exits 1.

ORGSYNC_DEPS_BUILD="build-essential cmake pkg-config libuv1-dev libhiredis-dev libcurl4-openssl-dev libjson-c-dev libpq-dev libhttp-parser-dev libssl-dev"
# ca-certificates: the system CA bundle that deploy/env/prod.env's sslrootcert= names (it.secrets loads every env file).
ORGSYNC_DEPS_SERVERS="postgresql-15 postgresql-client-15 redis-server curl procps python3 strace tzdata jq ca-certificates"
# clang and its sanitizer/libFuzzer runtimes (Debian 12 ships clang 14; with
# --no-install-recommends clang does not pull libclang-rt-14-dev) are for the
# fuzz targets that a full tests/run.sh ends with.
# prometheus is for promtool (it.prometheus: check rules, test rules, check metrics);
# systemd (systemd-analyze, systemd-sysusers) is for it.systemd and it.package,
# dpkg-dev and file for cpack's dpkg-shlibdeps in it.package.
ORGSYNC_DEPS_TEST="libcmocka-dev chromium clang libclang-rt-14-dev prometheus systemd dpkg-dev file"
ORGSYNC_DEPS_BENCH="wrk nginx-light valgrind"

deps_missing() {
    local p missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    echo "$missing"
}

deps_ensure() {
    local want="$ORGSYNC_DEPS_BUILD $ORGSYNC_DEPS_SERVERS"
    case ${1:-test} in
    test) want="$want $ORGSYNC_DEPS_TEST" ;;
    bench) want="$want $ORGSYNC_DEPS_TEST $ORGSYNC_DEPS_BENCH" ;;
    demo) ;;
    esac
    local missing
    # shellcheck disable=SC2086
    missing=$(deps_missing $want)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages. Run as root:" >&2
        echo "  apt-get update && apt-get install -y$missing" >&2
        exit 1
    fi
    echo "== installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Debian starts a system-wide redis-server and postgresql cluster (and a
# prometheus server) on install;
    # orgsync never uses them (tests start their own on free ports).
}
