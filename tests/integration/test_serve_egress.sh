#!/usr/bin/env bash
# Egress-aware candidacy (issue 16, item 6): host b leaves from 127.0.0.2, which
# the enterprise's app does not trust (60020); host a from 127.0.0.1, which it
# does. b's first run fails that enterprise at once (no retry, nobody deleted),
# b records its egress as refused and stops competing, saying why in
# /v1/leader; from then on every run is led by a, including the fires that the
# fair rotation would have given b, and they succeed.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap
SV_ENV="egress$$"

SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 1 --enterprises 1 --departments 4 --users-per-dept 3 --latency-ms 2
serve_corps "$SDB" 1
curl -fsS -X POST "$SIM_URL/sim/policy" -d '{"trusted_ips": ["127.0.0.1"]}' >/dev/null
refused_key="orgsync:$SV_ENV:egress_refused:egress-b"

# ---- b alone: it leads, meets 60020, and stops competing
serve_start b 0 ORGSYNC_UPSTREAM_BIND=127.0.0.2 ORGSYNC_EGRESS_ID=egress-b ORGSYNC_WORKERS=1
serve_wait_ready b
sleep 1.5 # b has heartbeated its candidacy
run1=$(serve_request_run b)
T=20 wait_for run_is "$run1" failed || not_ok "run $run1 did not end failed: $(run_state "$run1")"
eq "b led the first run" b "$(psql_q "SELECT split_part(leader_instance, '/', 1) FROM sync_runs WHERE run_id = $run1")"
err=$(psql_q "SELECT last_error FROM sync_progress WHERE run_id = $run1")
check "the enterprise failed on 60020, naming b's IP" grep -q "errcode 60020.*127.0.0.2" <<<"$err"
eq "60020 was not retried" 1 "$(sim_stat '.corps[0].errcodes["60020"] // 0')"
check "b's egress is recorded as refused" test -n "$(rcli GET "$refused_key")"
ttl=$(rcli TTL "$refused_key")
check "for ORGSYNC_EGRESS_REFUSED_TTL (ttl $ttl s)" test "$ttl" -gt 3000 -a "$ttl" -le 3600
# the workers learn it with their next candidacy heartbeat (every second)
T=5 wait_for bash -c "curl -fsS http://127.0.0.1:${SV_HTTP[b]}/v1/leader | jq -e '.this_worker.eligible == false'" || true
leader=$(curl -fsS "http://127.0.0.1:${SV_HTTP[b]}/v1/leader")
eq "b says it is not eligible" false "$(jq -r .this_worker.eligible <<<"$leader")"
check "and why: its egress was refused" grep -q "the upstream refused egress egress-b" <<<"$(jq -r .this_worker.why_not <<<"$leader")"

# ---- a joins: every later run is a's, and succeeds
serve_start a 0 ORGSYNC_UPSTREAM_BIND=127.0.0.1 ORGSYNC_EGRESS_ID=egress-a ORGSYNC_WORKERS=1
serve_wait_ready a
sleep 1.5
for i in 1 2 3; do
    r=$(serve_request_run a)
    T=20 wait_for run_is "$r" succeeded || not_ok "run $r: $(run_state "$r")"
    eq "run $i after the refusal was led by a" a "$(psql_q "SELECT split_part(leader_instance, '/', 1) FROM sync_runs WHERE run_id = $r")"
done
eq "no 60020 since b stepped aside" 1 "$(sim_stat '.corps[0].errcodes["60020"] // 0')"
check "PostgreSQL holds the directory" serve_data_equals_sim "$SDB"
eq "a is eligible" true "$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/v1/leader" | jq -r .this_worker.eligible)"

# ---- the refusal expires (or an operator deletes it): b competes again
rcli DEL "$refused_key" >/dev/null
T=5 wait_for bash -c "curl -fsS http://127.0.0.1:${SV_HTTP[b]}/v1/leader | jq -e '.this_worker.eligible == true'" ||
    not_ok "b did not become eligible again once the key was gone"
ok "b competes again once the refusal is gone"
check "no sanitizer report" serve_logs_clean
finish
