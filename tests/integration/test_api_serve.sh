#!/usr/bin/env bash
# The HTTP API on real `orgsync serve` processes: two "hosts" (a, b), two workers
# each, on one database and one Redis. Every worker on every host gives the same
# answer; the negative cache and the lookup budget are shared by all processes;
# a 10 MB body is refused and the workers keep serving.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

SV_ENV="apiserve$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 3 --departments 4 --users-per-dept 3
serve_corps "$SDB" 3
READ_TOKEN=test-read-token-0123456789
serve_start a 0 ORGSYNC_LOOKUP_BUDGET=3 ORGSYNC_READ_TOKEN=$READ_TOKEN
serve_start b 1 ORGSYNC_LOOKUP_BUDGET=3 ORGSYNC_SCHEDULE=off ORGSYNC_READ_TOKEN=$READ_TOKEN
serve_wait_ready a b
A="http://127.0.0.1:${SV_HTTP[a]}"
B="http://127.0.0.1:${SV_HTTP[b]}"
AUTH="Authorization: Bearer $SV_ADMIN"
RAUTH="Authorization: Bearer $READ_TOKEN"

# A run requested through b (which never leads) is run by a's leader.
run=$(curl -fsS -X POST -H "$AUTH" "$B/v1/runs" | jq -r .run_id)
check "POST /v1/runs answers a run id" test "$run" -gt 0
T=30 wait_for run_is "$run" succeeded
eq "the run succeeded" succeeded "$(run_state "$run")"

# Identical answers from every worker of every host (20 requests each: the
# kernel spreads them over both workers of a host).
for h in "$A" "$B"; do
    for _ in $(seq 1 20); do curl -fsS "$h/v1/runs/latest" | md5sum; done
done | sort -u >"$SV_DIR/latest.md5"
eq "40 answers of /v1/runs/latest from 4 workers are byte-identical" 1 "$(wc -l <"$SV_DIR/latest.md5")"
latest=$(curl -fsS "$A/v1/runs/latest")
eq "the latest run is the one requested" "$run" "$(jq -r .run_id <<<"$latest")"
eq "percent of a finished run" 100 "$(jq -r .percent <<<"$latest")"
eq "three enterprises" 3 "$(jq -r '.enterprises | length' <<<"$latest")"
eq "departments_done of wwsim0002" 4 "$(jq -r '.enterprises[1].departments_done' <<<"$latest")"
for h in "$A" "$B"; do
    for _ in $(seq 1 10); do curl -fsS -H "$RAUTH" "$h/v1/enterprises/wwsim0003/users?page=1&page_size=5" | md5sum; done
done | sort -u >"$SV_DIR/users.md5"
eq "member pages are identical everywhere" 1 "$(wc -l <"$SV_DIR/users.md5")"
eq "users total equals PostgreSQL" \
    "$(psql_q "SELECT count(*) FROM users WHERE corp_id = 'wwsim0003' AND deleted_at IS NULL")" \
    "$(curl -fsS -H "$RAUTH" "$B/v1/enterprises/wwsim0003/users" | jq -r .total)"
mobile=$(psql_q "SELECT mobile FROM users WHERE corp_id = 'wwsim0001' ORDER BY userid LIMIT 1")
eq "GET /v1/users?mobile finds the member" 1 "$(curl -fsS -H "$RAUTH" "$B/v1/users?mobile=$mobile" | jq -r .total)"

# The negative cache is shared: an unknown mobile asked through a, then through b,
# reaches the upstream once.
calls() { sim_stat '.total.by_path["user/getuserid"]'; }
c0=$(calls)
lookup() { # HOST MOBILE -> status
    curl -sS -o /dev/null -w '%{http_code}' -X POST -H "$AUTH" \
        -d "{\"corp_id\":\"wwsim0001\",\"mobile\":\"$2\"}" "$1/v1/users/realtime-lookup"
}
eq "unknown mobile through a: 404" 404 "$(lookup "$A" 17700000001)"
eq "same mobile through b: 404" 404 "$(lookup "$B" 17700000001)"
eq "one upstream getuserid for both" $((c0 + 1)) "$(calls)"
eq "a malformed mobile: 400" 400 "$(lookup "$B" 1770000000x)"
eq "and no upstream call" $((c0 + 1)) "$(calls)"
# The budget (3 an hour) is shared: 1 used above, 2 more through b, then a refuses.
eq "second lookup (b)" 404 "$(lookup "$B" 17700000002)"
eq "third lookup (b)" 404 "$(lookup "$B" 17700000003)"
eq "fourth lookup (a) is over the shared budget" 429 "$(lookup "$A" 17700000004)"
eq "upstream saw exactly 3 getuserid" $((c0 + 3)) "$(calls)"

# A 10 MB body is refused with 413, and every worker keeps serving.
head -c 10485760 /dev/zero | tr '\0' a >"$SV_DIR/big"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H "$AUTH" --data-binary @"$SV_DIR/big" \
    "$A/v1/users/realtime-lookup" 2>/dev/null || true)
eq "10 MB body: 413" 413 "$code"
ok_count=0
for _ in $(seq 1 20); do curl -fsS "$A/healthz" >/dev/null && ok_count=$((ok_count + 1)); done
eq "host a still answers" 20 "$ok_count"

# Metrics are the host's, whichever worker answers: both workers listed.
m=$(curl -fsS "$A/metrics")
check "/metrics lists worker 1" grep -q '^orgsync_worker_info{worker="1",orgsync_instance="a/w1",pid="[0-9]*"} 1' <<<"$m"
check "/metrics lists worker 2" grep -q '^orgsync_worker_info{worker="2",orgsync_instance="a/w2",pid="[0-9]*"} 1' <<<"$m"
# GET /v1/candidates: the hosts competing for the lock, from the candidates hash.
# b never competes (schedule off); c runs older code; "gone/w1" stopped heartbeating.
ver=$(jq -r .code_version <<<"$latest")
serve_start c 0 ORGSYNC_WORKERS=1 ORGSYNC_CODE_VERSION=0.0.1
serve_wait_ready c
live_cands() { curl -fsS "$A/v1/candidates" | jq '[.candidates[] | select(.live)] | length'; }
T=10 wait_for test "$(live_cands)" = 2 || not_ok "c never became a live candidate"
rnow=$(rcli TIME | head -1)
rcli HSET "orgsync:$SV_ENV:candidates:$SV_JOB" gone/w1 "9.9.9|$(((rnow - 120) * 1000))|0" >/dev/null
cands=$(curl -fsS "$B/v1/candidates")
echo "$cands"
cand() { jq -r --arg i "$1" ".candidates[] | select(.instance | test(\"^\" + \$i + \"(/w1)?\$\")) | $2" <<<"$cands"; }
eq "three candidates, by instance" "a/w1 c gone/w1" \
    "$(jq -r '[.candidates[].instance | sub("^c/w1$"; "c")] | join(" ")' <<<"$cands")"
eq "a's version" "$ver" "$(cand a .code_version)"
eq "c's version" 0.0.1 "$(cand c .code_version)"
eq "the newest live version is a's" "$ver" "$(jq -r .newest_version <<<"$cands")"
eq "a: live, may lead, first in line" "true true 0" "$(cand a '"\(.live) \(.eligible) \(.rank)"')"
eq "c: live, older code, may not lead" "true false false null" \
    "$(cand c '"\(.live) \(.version_ok) \(.eligible) \(.rank)"')"
check "c's reason names both versions" grep -q "code version 0.0.1 is older than $ver" <<<"$(cand c .why_not)"
eq "gone: not live, may not lead" "false false" "$(cand gone/w1 '"\(.live) \(.eligible)"')"
check "gone's reason says when it was last seen" grep -q '^not live: last heartbeat 1[12][0-9] s ago$' \
    <<<"$(cand gone/w1 .why_not)"
check "last_seen is RFC 3339" grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{12}Z$' <<<"$(cand a .last_seen)"
eq "a led the run: last_led set" true "$(cand a '.last_led != null')"
eq "c never led" null "$(cand c .last_led)"
# Errors as on every other route: a wrong method is 405 with Allow, a longer path 404.
st() { curl -sS -o "$SV_DIR/st.body" -D "$SV_DIR/st.head" -w '%{http_code}' "$@"; }
eq "POST /v1/candidates: 405 (as /v1/leader)" "405 $(st -X POST "$A/v1/leader")" "$(st -X POST "$A/v1/candidates") 405"
check "405 names the allowed method" grep -qi '^allow: .*GET' "$SV_DIR/st.head"
eq "405 body is an API error" method_not_allowed "$(jq -r .error.code "$SV_DIR/st.body")"
eq "GET /v1/candidates/x: 404 (as /v1/leader/x)" "404 $(st "$A/v1/leader/x")" "$(st "$A/v1/candidates/x") 404"
eq "404 body is an API error" not_found "$(jq -r .error.code "$SV_DIR/st.body")"

check "no sanitizer report in any log" serve_logs_clean
finish
