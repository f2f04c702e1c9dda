#!/usr/bin/env bash
# /metrics as Prometheus sees it, on a host of two workers behind one port:
#   - deploy/prometheus/orgsync.rules.yml passes `promtool check rules` and its
#     unit tests (`promtool test rules`);
#   - every scrape passes `promtool check metrics` (no error, no lint problem);
#   - across scrapes taken during a run, after it, and across a SIGKILLed worker
#     that the supervisor restarts, no counter or histogram series goes down or
#     disappears, and orgsync_lock_held says the same thing whichever worker
#     answers (during the run: 1, the scheduler worker leads);
#   - a second host reports the same environment-wide series (runs by state,
#     last successes: from PostgreSQL);
#   - deploy/grafana/orgsync.json is JSON and every metric its queries (and the
#     rules) name is in a scrape.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

if ! command -v promtool >/dev/null; then
    not_ok "promtool not installed (Debian package prometheus, tests/lib/deps.sh)"
    finish
fi
RULES="$ORGSYNC_SRC/deploy/prometheus"
DASH="$ORGSYNC_SRC/deploy/grafana/orgsync.json"
check "promtool check rules" promtool check rules "$RULES/orgsync.rules.yml"
check "promtool test rules (the rules' unit tests)" bash -c 'cd "$1" && promtool test rules orgsync.rules.test.yml' _ "$RULES"

SV_ENV="prom$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
# Slow answers make a run last a few seconds, long enough to scrape it.
serve_sim 1 --enterprises 2 --departments 60 --users-per-dept 3 --seed 7 --latency-ms 150
serve_corps "$SDB" 2
# An enterprise the upstream does not know: its gettoken fails, the run ends
# partial and raises alerts (so that orgsync_alerts_total exists).
psql_q "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('wwsim0099', 'ghost', 'nope')" >/dev/null
serve_start a 0 ORGSYNC_WORKERS=2 ORGSYNC_SCHEDULER_WORKERS=1
serve_wait_ready a
URL="http://127.0.0.1:${SV_HTTP[a]}"
S="$SV_DIR/scrapes"
mkdir -p "$S"
NS=0
PROM_BAD=0
# One scrape into $S/NNNN, checked by promtool; some traffic first so that
# counters of both workers move between scrapes.
scrape() {
    local f out
    curl -fsS "$URL/healthz" >/dev/null
    curl -fsS "$URL/v1/leader" >/dev/null || true
    f=$(printf '%s/%04d' "$S" "$NS")
    NS=$((NS + 1))
    curl -fsS "$URL/metrics" >"$f" || { echo "scrape $f failed"; PROM_BAD=$((PROM_BAD + 1)); return; }
    if ! out=$(promtool check metrics <"$f" 2>&1) || [ -n "$out" ]; then
        echo "promtool check metrics on $f: $out"
        PROM_BAD=$((PROM_BAD + 1))
    fi
}
lock_of() { awk '$1 ~ /^orgsync_lock_held\{/ {print $2}' "$1"; }
val_in() { awk -v k="$2" '$1 == k {print $2}' "$1"; }
last() { printf '%s/%04d' "$S" "$((NS - 1))"; }

# During the run: the scheduler worker (1) holds the lock.
rid=$(serve_request_run a)
T=20 wait_for run_running "$rid" || not_ok "run $rid did not start"
# the leader publishes its lock state within a second
sleep 1.2
during0=$NS
for _ in $(seq 1 20); do
    scrape
    sleep 0.05
done
during1=$NS
running_after=$(run_state "$rid")
T=60 wait_for bash -c "[ \"\$(psql -qAtX '$SDB' -c \"SELECT state FROM sync_runs WHERE run_id = $rid\")\" != running ]" ||
    not_ok "run $rid did not finish"
lock_during=$(for i in $(seq "$during0" $((during1 - 1))); do lock_of "$(printf '%s/%04d' "$S" "$i")"; done | sort | uniq -c | awk '{print $1 " x " $2}')
if [ "$running_after" = running ]; then
    eq "orgsync_lock_held during the run: 1 in all 20 scrapes, whichever worker answered" "20 x 1" "$lock_during"
else
    not_ok "the run ended before the 20 scrapes did (state $running_after): make it longer"
fi

# A realtime lookup of an unknown mobile (orgsync_lookups_total).
curl -sS -o /dev/null -X POST -H "Authorization: Bearer $SV_ADMIN" -H 'Content-Type: application/json' \
    -d '{"corp_id":"wwsim0001","mobile":"13900000000"}' "$URL/v1/users/realtime-lookup" || true

# After the run: 20 scrapes, then worker 2 is killed and restarted, 20 more.
sleep 1.2
for _ in $(seq 1 20); do scrape; done
check "the run is counted (runs by state)" grep -q "^orgsync_runs{env=\"$SV_ENV\",orgsync_job=\"directory-sync\",state=\"partial\"} 1" "$(last)"
lock_after=$(for i in $(seq "$during1" $((NS - 1))); do lock_of "$(printf '%s/%04d' "$S" "$i")"; done | sort -u)
eq "orgsync_lock_held after the run: 0 in every scrape" 0 "$lock_after"
# worker 2's pid, from the supervisor's log, and as the metrics say it
old_pid=$(sed -n 's/.*"supervisor: worker started".*"worker_id":2,"pid":\([0-9]*\).*/\1/p' "$SV_DIR/a.log" | tail -1)
check "worker 2's pid is in orgsync_worker_info" grep -q "^orgsync_worker_info{worker=\"2\",.*pid=\"$old_pid\"" "$(last)"
[ -n "$old_pid" ] && kill -KILL "$old_pid"
new_pid_is_up() {
    curl -fsS "$URL/metrics" | grep -q "^orgsync_worker_info{worker=\"2\",.*pid=\"[0-9]*\"" &&
        ! curl -fsS "$URL/metrics" | grep -q "pid=\"$old_pid\""
}
# scrape on while it is down and restarting
for _ in $(seq 1 5); do scrape; sleep 0.1; done
T=20 wait_for new_pid_is_up || not_ok "worker 2 did not come back"
for _ in $(seq 1 20); do scrape; done
eq "two live workers again" 2 "$(val_in "$(last)" orgsync_workers_up)"
eq "every scrape passes promtool check metrics" 0 "$PROM_BAD"

# Counters and histograms never go down nor vanish from one scrape to the next.
check "no counter goes down or disappears across $NS scrapes and a worker restart" python3 - "$S" <<'PY'
import os, re, sys
d = sys.argv[1]
files = sorted(os.listdir(d))
prev, bad = None, []
for f in files:
    kinds, cur = {}, {}
    for line in open(os.path.join(d, f)):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            kinds[name] = kind
            continue
        if line.startswith("#") or not line.strip():
            continue
        key, val = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if kinds.get(name) == "counter" or (kinds.get(base) == "histogram" and base != name):
            cur[key] = float(val)
    if prev is not None:
        for k, v in prev.items():
            if k not in cur:
                bad.append(f"{f}: {k} disappeared")
            elif cur[k] < v:
                bad.append(f"{f}: {k} went from {v} to {cur[k]}")
    prev = cur
for b in bad[:20]:
    print(b)
sys.exit(1 if bad else 0)
PY

# A second host (one worker, not competing) says the same about the environment.
serve_start b 0 ORGSYNC_WORKERS=1 ORGSYNC_SCHEDULE=off
serve_wait_ready b
envwide() { grep -E '^orgsync_(runs|last_success_timestamp_seconds)\{' "$1" | sort; }
curl -fsS "http://127.0.0.1:${SV_HTTP[b]}/metrics" >"$SV_DIR/b.scrape"
curl -fsS "$URL/metrics" >"$SV_DIR/a.scrape"
check "host b has the environment-wide series" test "$(envwide "$SV_DIR/b.scrape" | wc -l)" -ge 10
eq "hosts a and b agree on runs and last successes" "$(envwide "$SV_DIR/a.scrape")" "$(envwide "$SV_DIR/b.scrape")"
eq "host b: lock not held there" 0 "$(lock_of "$SV_DIR/b.scrape")"

# The dashboard and the rules name only metrics a scrape has.
check "the dashboard is JSON with panels" jq -e '.panels | length > 10' "$DASH"
names=$(cat "$S"/* | awk '!/^#/ {sub(/[{ ].*/, ""); print}' | sort -u)
missing=""
for m in $( (jq -r '.. | .expr? // empty' "$DASH"; cat "$RULES/orgsync.rules.yml") |
    grep -oE '\b(orgsync|process)_[a-z_]+' | grep -vxE 'orgsync_(job|instance)' | sort -u); do
    grep -qx "$m" <<<"$names" || missing="$missing $m"
done
eq "metrics the dashboard and the rules use that no scrape has" "" "$missing"
# ORGSYNC_SHOW_SCRAPE=1: print the last scrape (for docs/API.md's excerpt)
[ -n "${ORGSYNC_SHOW_SCRAPE:-}" ] && sed 's/^/# scrape: /' "$(last)"
finish
