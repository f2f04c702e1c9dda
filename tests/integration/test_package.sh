#!/usr/bin/env bash
# The Debian package: a Release build (no sanitizers, no tests, no cmocka) in
# its own build directory (ORGSYNC_PKG_BUILD_DIR, default <src>/build-pkg,
# reused when present), `cpack -G DEB`, `dpkg -i` on this machine, then as an
# operator would: the files where docs/OPERATIONS.md says, the orgsync user,
# `orgsync --version`, the settings file in /etc/orgsync read by the orgsync
# user, `orgsync migrate` into an empty database, `serve` answering /healthz,
# `systemd-analyze verify` on the installed unit; and `dpkg --purge` at the
# end, whatever happened, leaving the machine as it was (the orgsync user too,
# if this test created it). Needs root; skipped (77) otherwise, or when an
# orgsync package is already installed (not ours to replace).
. "$(dirname "$0")/../lib/testlib.sh"

if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: dpkg -i needs root"
    exit 77
fi
if dpkg-query -W -f='${Status}' orgsync 2>/dev/null | grep -q installed; then
    echo "SKIPPED: an orgsync package is installed already; not replacing it"
    exit 77
fi

B=${ORGSYNC_PKG_BUILD_DIR:-$ORGSYNC_SRC/build-pkg}
W=$(mktemp -d "$ORGSYNC_TEST_TMP/package.XXXXXX")
chmod 755 "$W"
DB="t_package_$$"
ADMIN=$ORGSYNC_TEST_PG_ADMIN_DSN
had_user=0
getent passwd orgsync >/dev/null && had_user=1
SERVE_PID=

cleanup() {
    local rc=$?
    trap - EXIT
    [ -n "$SERVE_PID" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    rm -f /etc/orgsync/orgsync.env
    dpkg --purge orgsync >/dev/null 2>&1 || true
    if [ "$had_user" = 0 ] && getent passwd orgsync >/dev/null; then
        userdel orgsync 2>/dev/null || true
        getent group orgsync >/dev/null && groupdel orgsync 2>/dev/null || true
    fi
    psql -qAtX "$ADMIN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$W"
    exit "$rc"
}
trap cleanup EXIT

# 1. Build and package (a Release build; the test build's ASan is no use here).
t0=$(date +%s)
cmake -S "$ORGSYNC_SRC" -B "$B" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    -DORGSYNC_SANITIZE=OFF -DCMAKE_INSTALL_PREFIX=/usr >"$W/configure.log" 2>&1 ||
    { cat "$W/configure.log"; exit 1; }
cmake --build "$B" -j"$(nproc)" --target orgsync >"$W/build.log" 2>&1 || { tail -40 "$W/build.log"; exit 1; }
rm -f "$B"/orgsync_*.deb
(cd "$B" && cpack -G DEB) >"$W/cpack.log" 2>&1 || { tail -40 "$W/cpack.log"; exit 1; }
DEB=$(ls "$B"/orgsync_*.deb | head -1)
echo "package: $DEB ($(($(date +%s) - t0)) s to build)"
check "cpack made a .deb" test -f "$DEB"
deps=$(dpkg-deb -f "$DEB" Depends)
echo "Depends: $deps"
for lib in libuv1 libhiredis0.14 libpq5 libcurl4 libjson-c5 libhttp-parser2.9 libssl3; do
    check "Depends names $lib" grep -q "$lib" <<<"$deps"
done
check "no test library in the dependencies" bash -c '! grep -q cmocka <<<"$1"' _ "$deps"

# 2. Install.
dpkg -i "$DEB" >"$W/dpkg.log" 2>&1 || { cat "$W/dpkg.log"; not_ok "dpkg -i failed"; finish; exit 1; }
ok "dpkg -i installed it"
for f in /usr/bin/orgsync /lib/systemd/system/orgsync.service /usr/lib/sysusers.d/orgsync.conf \
    /usr/share/doc/orgsync/examples/prod.env /usr/share/doc/orgsync/examples/staging.env \
    /usr/share/doc/orgsync/OPERATIONS.md /usr/share/doc/orgsync/CONFIGURATION.md /usr/share/orgsync/sql/roles.sql; do
    check "installed: $f" test -f "$f"
done
check "the binary is executable" test -x /usr/bin/orgsync
check "the binary needs no missing library" bash -c '! ldd /usr/bin/orgsync | grep -q "not found"'
check "... and no sanitizer runtime (a Release build)" bash -c '! ldd /usr/bin/orgsync | grep -q -E "libasan|libubsan"'
check "postinst created the orgsync user, no login shell" bash -c 'getent passwd orgsync | grep -q ":/usr/sbin/nologin$"'
eq "/etc/orgsync is root:orgsync 0750" "root:orgsync 750" "$(stat -c '%U:%G %a' /etc/orgsync 2>/dev/null)"

# 3. The binary.
ver=$(/usr/bin/orgsync --version 2>&1 | head -1)
echo "orgsync --version: $ver"
check "orgsync --version names the version" grep -q '0\.[0-9]*\.[0-9]*\|[0-9]\+\.[0-9]\+' <<<"$ver"
check "orgsync version exits 0" /usr/bin/orgsync version
need=$(ls "$ORGSYNC_SRC"/sql/[0-9][0-9][0-9]_*.sql | tail -1 | xargs basename | cut -c1-3 | sed 's/^0*//')

# 4. As the documented install goes: a settings file the orgsync user reads, migrate.
psql -qAtX -v ON_ERROR_STOP=1 "$ADMIN" -c "CREATE DATABASE $DB OWNER orgsync" >/dev/null
DSN="${ORGSYNC_TEST_PG_DSN/dbname=orgsync_test/dbname=$DB}"
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
install -m 0640 -g orgsync /dev/null /etc/orgsync/orgsync.env
cat >/etc/orgsync/orgsync.env <<ENV
ORGSYNC_ENV=pkg$$
ORGSYNC_PG_DSN=$DSN
ORGSYNC_REDIS_URL=$ORGSYNC_TEST_REDIS_URL
ORGSYNC_HTTP_ADDR=127.0.0.1:$HTTP_PORT
ORGSYNC_WORKERS=2
ORGSYNC_LOG_FORMAT=text
ENV
rc=0
setpriv --reuid=orgsync --regid=orgsync --init-groups -- /usr/bin/orgsync --config /etc/orgsync/orgsync.env migrate >"$W/migrate.log" 2>&1 || rc=$?
eq "orgsync migrate (as the orgsync user, via setpriv: it execs, so signals reach orgsync) exits 0" 0 "$rc"
[ "$rc" = 0 ] || cat "$W/migrate.log"
eq "the database is at the schema version the package needs" "$need" \
    "$(psql -qAtX "$DSN" -c 'SELECT max(version) FROM schema_migrations' 2>/dev/null)"
rc=0
setpriv --reuid=orgsync --regid=orgsync --init-groups -- /usr/bin/orgsync --config /etc/orgsync/orgsync.env migrate >>"$W/migrate.log" 2>&1 || rc=$?
eq "migrate again: nothing to do, exit 0" 0 "$rc"

# 5. serve as the unit runs it (the same command line, the same user).
setpriv --reuid=orgsync --regid=orgsync --init-groups -- /usr/bin/orgsync --config /etc/orgsync/orgsync.env serve >"$W/serve.log" 2>&1 &
SERVE_PID=$!
up=0
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && { up=1; break; }
    sleep 0.1
done
eq "the installed serve answers /healthz" 1 "$up"
kill -TERM "$SERVE_PID"
rc=0
wait "$SERVE_PID" || rc=$?
SERVE_PID=
eq "... and stops on SIGTERM with exit 0" 0 "$rc"
[ "$rc" = 0 ] || tail -20 "$W/serve.log"

# 6. The unit as installed.
rc=0
systemd-analyze verify --man=no /lib/systemd/system/orgsync.service >"$W/verify.out" 2>&1 || rc=$?
eq "systemd-analyze verify on the installed unit exits 0" 0 "$rc"
check "... and says nothing ($(head -c 300 "$W/verify.out"))" test ! -s "$W/verify.out"

# 7. Purge: every file goes; /etc/orgsync too, once the operator's file is gone.
rm -f /etc/orgsync/orgsync.env
dpkg --purge orgsync >"$W/purge.log" 2>&1 || { cat "$W/purge.log"; not_ok "dpkg --purge failed"; }
check "purged: the package is gone" bash -c '! dpkg-query -W -f="\${Status}" orgsync 2>/dev/null | grep -q installed'
check "purged: /usr/bin/orgsync is gone" test ! -e /usr/bin/orgsync
check "purged: the unit is gone" test ! -e /lib/systemd/system/orgsync.service
check "purged: /etc/orgsync is gone" test ! -e /etc/orgsync
finish
