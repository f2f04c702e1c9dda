#!/usr/bin/env bash
# deploy/systemd/: the unit passes `systemd-analyze verify` with no complaint
# at all (verify exits 0 even on unknown keys, so its output must be empty);
# it says what issue 18 asked (Type=notify, NotifyAccess=main, a watchdog,
# RestartPreventExitStatus=2, a reload, User=orgsync, settings through
# --config so that a reload re-reads them); its sandbox keeps an exposure
# score of at most 2.0; sysusers.d creates the orgsync user; and the exit
# status the unit refuses to restart on (2) is what a bad setting gives.
# (it.package verifies the unit as the package installs it, at /usr/bin.)
. "$(dirname "$0")/../lib/testlib.sh"

UNIT="$ORGSYNC_SRC/deploy/systemd/orgsync.service"
D=$(mktemp -d "$ORGSYNC_TEST_TMP/systemd.XXXXXX")
trap 'rm -rf "$D"' EXIT

# verify needs the ExecStart binary to exist: the build's, in a copy of the unit.
sed "s#/usr/bin/orgsync#$ORGSYNC_BIN#g" "$UNIT" >"$D/orgsync.service"
rc=0
systemd-analyze verify --man=no "$D/orgsync.service" >"$D/verify.out" 2>&1 || rc=$?
eq "systemd-analyze verify exits 0" 0 "$rc"
check "... and says nothing ($(head -c 300 "$D/verify.out"))" test ! -s "$D/verify.out"

# A unit with a typo must fail the same check (the check can fail).
sed 's/^Type=notify/Type=notfy/' "$D/orgsync.service" >"$D/typo.service"
systemd-analyze verify --man=no "$D/typo.service" >"$D/typo.out" 2>&1 || true
check "a typo in the unit is reported (the check can fail)" test -s "$D/typo.out"

key() { grep -E "^$1=" "$UNIT" | tail -1 | cut -d= -f2-; }
eq "Type" notify "$(key Type)"
eq "NotifyAccess" main "$(key NotifyAccess)"
check "WatchdogSec is set ($(key WatchdogSec))" test -n "$(key WatchdogSec)"
eq "RestartPreventExitStatus" 2 "$(key RestartPreventExitStatus)"
eq "User" orgsync "$(key User)"
eq "ExecReload sends SIGHUP to the main process" '/bin/kill -HUP $MAINPID' "$(key ExecReload)"
eq "ExecStart reads the settings file itself" "/usr/bin/orgsync --config /etc/orgsync/orgsync.env serve" "$(key ExecStart)"
check "no EnvironmentFile= (a reload could not re-read it)" bash -c '! grep -q "^EnvironmentFile=" "$1"' _ "$UNIT"

score=$(systemd-analyze security --offline=yes "$D/orgsync.service" 2>/dev/null |
    sed -n 's/.*Overall exposure level for orgsync.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score"
check "sandbox exposure at most 2.0 (got ${score:-none})" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'

# sysusers.d: the user, with no login shell, in a scratch root.
mkdir -p "$D/root/etc"
systemd-sysusers --root="$D/root" "$ORGSYNC_SRC/deploy/systemd/orgsync.sysusers" >/dev/null 2>&1
check "sysusers creates the orgsync user with nologin" grep -q '^orgsync:x:[0-9]*:[0-9]*:.*:/nonexistent:/usr/sbin/nologin$' "$D/root/etc/passwd"
check "... and its group" grep -q '^orgsync:x:' "$D/root/etc/group"

# Every example settings file is one the unit's --config accepts.
for f in "$ORGSYNC_SRC"/deploy/env/*.env; do
    rc=0
    env -i "$ORGSYNC_BIN" --config "$f" version >"$D/example.out" 2>&1 || rc=$?
    eq "deploy/env/$(basename "$f") is a valid --config file" 0 "$rc"
    [ "$rc" = 0 ] || cat "$D/example.out"
done

# The unit's command line with a bad settings file: exit 2, never restarted.
printf 'ORGSYNC_HTTP_ADDR=nowhere\n' >"$D/bad.env"
rc=0
env -u ORGSYNC_HTTP_ADDR "$ORGSYNC_BIN" --config "$D/bad.env" serve >"$D/bad.out" 2>&1 || rc=$?
eq "a bad setting in the file: exit 2 (RestartPreventExitStatus)" 2 "$rc"
check "... naming it" grep -q 'ORGSYNC_HTTP_ADDR' "$D/bad.out"
finish
