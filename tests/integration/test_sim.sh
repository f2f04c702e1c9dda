#!/usr/bin/env bash
# Integration test of the WeCom simulator (tests/sim/): API shapes, the generated
# directory, the arrival-time rate window, concurrency cap, token expiry, every
# fault, stats per enterprise and per port, mutations, both credentials and the
# policy switches (48009, 60020, 60011, app_new), user/list_id paging,
# department/simplelist and department/get, the per-IP limits and stats (requests
# sent from 127.0.0.2 with curl --interface), and a clean exit (which also lets
# LeakSanitizer speak in a sanitized build).
#
# Needs ORGSYNC_SIM_BIN (ctest sets it), curl, jq and python3. No PostgreSQL/Redis.
set -euo pipefail

SIM=${ORGSYNC_SIM_BIN:-}
if [ -z "$SIM" ] || [ ! -x "$SIM" ]; then
    echo "FAIL: ORGSYNC_SIM_BIN is not set or not executable ('$SIM'); run through ctest" >&2
    exit 1
fi
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is required" >&2; exit 1; }
done

WORK=$(mktemp -d "${ORGSYNC_TEST_TMP:-${TMPDIR:-/tmp}}/sim-test.XXXXXX")
declare -A PID PORT
BGPIDS=()

cleanup() {
    local rc=$?
    for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
    for name in "${!PID[@]}"; do wait "${PID[$name]}" 2>/dev/null || true; done
    if [ "$rc" != 0 ]; then
        for f in "$WORK"/*.err; do
            [ -e "$f" ] && { echo "--- $f (tail)"; tail -5 "$f"; }
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() { echo "ok - $*"; }

# start_sim NAME [flags...]: starts a simulator on a free port, waits for its
# "listening <port>" line, sets PORT[NAME] and PID[NAME].
start_sim() {
    local name=$1
    shift
    "$SIM" --port 0 --log-format text "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID[$name]=$!
    for _ in $(seq 1 100); do
        if [ -s "$WORK/$name.out" ] && grep -q '^listening ' "$WORK/$name.out"; then
            PORT[$name]=$(awk 'NR==1 {print $2}' "$WORK/$name.out")
            return 0
        fi
        kill -0 "${PID[$name]}" 2>/dev/null || fail "sim $name exited at start: $(cat "$WORK/$name.err")"
        sleep 0.05
    done
    fail "sim $name did not print its port"
}

# stop_sim NAME [SIGNAL]: stops it and requires exit status 0 and no sanitizer report.
stop_sim() {
    local name=$1 sig=${2:-TERM} rc=0
    kill -"$sig" "${PID[$name]}"
    wait "${PID[$name]}" || rc=$?
    unset "PID[$name]"
    [ "$rc" = 0 ] || fail "sim $name exited with $rc on SIG$sig"
    if grep -qE 'Sanitizer|runtime error' "$WORK/$name.err"; then
        grep -E -A20 'Sanitizer|runtime error' "$WORK/$name.err" | head -40 >&2
        fail "sim $name: sanitizer report"
    fi
}

# get NAME PATH: body of a GET (fails the test on a transport error).
get() { curl -sS --max-time 5 "http://127.0.0.1:${PORT[$1]}$2"; }
# post NAME PATH BODY
post() { curl -sS --max-time 5 -X POST -H 'Content-Type: application/json' --data-binary "$3" "http://127.0.0.1:${PORT[$1]}$2"; }
# status NAME METHOD PATH [BODY]: the HTTP status only.
status() {
    local args=(-s --max-time 5 -o /dev/null -w '%{http_code}' -X "$2")
    if [ $# -ge 4 ]; then args+=(--data-binary "$4"); fi
    curl "${args[@]}" "http://127.0.0.1:${PORT[$1]}$3"
}
# expect BODY JQ-EXPRESSION DESCRIPTION
expect() {
    echo "$1" | jq -e "$2" >/dev/null 2>&1 || fail "$3: '$2' is false for: $(echo "$1" | head -c 600)"
}
# errcode BODY: the errcode, requiring errcode and errmsg to be there.
errcode() {
    echo "$1" | jq -e 'has("errcode") and (.errmsg | type == "string")' >/dev/null 2>&1 ||
        fail "answer without errcode/errmsg: $(echo "$1" | head -c 300)"
    echo "$1" | jq -r .errcode
}
token() { get "$1" "/cgi-bin/gettoken?corpid=$2&corpsecret=secret-$2" | jq -r .access_token; }
# The contact-sync credential's token.
ctoken() { get "$1" "/cgi-bin/gettoken?corpid=$2&corpsecret=contact-$2" | jq -r .access_token; }
# get_from IP NAME PATH / post_from IP NAME PATH BODY: sent from that local address
# (any 127.0.0.x is loopback on Linux), so the simulator sees it as the source.
get_from() { curl -sS --max-time 5 --interface "$1" "http://127.0.0.1:${PORT[$2]}$3"; }
post_from() {
    curl -sS --max-time 5 --interface "$1" -X POST -H 'Content-Type: application/json' \
        --data-binary "$4" "http://127.0.0.1:${PORT[$2]}$3"
}
# refused BODY CODE MSG IP: errcode CODE and today's errmsg shape, naming the address:
# "MSG, hint: [...], from ip: IP, more info at https://open.work.weixin.qq.com/devtool/query?e=CODE"
refused() {
    python3 - "$1" "$2" "$3" "$4" <<'EOF' || fail "want errcode $2 \"$3\" from $4, got: $(echo "$1" | head -c 400)"
import json, re, sys
body, code, msg, ip = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
o = json.loads(body)
assert o["errcode"] == code, o
pat = ("^" + re.escape(msg) + r", hint: \[[^\]]+\], from ip: " + re.escape(ip) +
       r", more info at https://open\.work\.weixin\.qq\.com/devtool/query\?e=%d$" % code)
assert re.match(pat, o["errmsg"]), o["errmsg"]
EOF
}

# ---------------------------------------------------------------- command line
"$SIM" --help >"$WORK/help.txt" || fail "--help exited non-zero"
grep -q 'wwsim%04d' "$WORK/help.txt" && grep -q 'secret-wwsim%04d' "$WORK/help.txt" &&
    grep -q 'contact-wwsim%04d' "$WORK/help.txt" ||
    fail "--help does not say how corp ids and secrets are derived"
for flag in --contact-legacy-ips --app-new --visible-depts --trusted-ips --ip-per-min --ip-per-hour; do
    grep -q -- "$flag" "$WORK/help.txt" || fail "--help does not list $flag"
done
for bad in "--trusted-ips 127.0.0.300" "--contact-legacy-ips 1.2.3.4," "--visible-depts 0" \
    "--app-new yes" "--ip-per-min 0"; do
    rc=0
    # shellcheck disable=SC2086 # the flag and its value
    "$SIM" $bad 2>"$WORK/bad.err" || rc=$?
    [ "$rc" = 2 ] && grep -q -- "${bad%% *}" "$WORK/bad.err" || fail "bad '$bad': exit $rc, want 2 naming the flag"
done
rc=0
"$SIM" --no-such-flag 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "unknown flag: exit $rc, want 2"
rc=0
"$SIM" --rate zero 2>"$WORK/bad.err" || rc=$?
[ "$rc" = 2 ] && grep -q -- '--rate' "$WORK/bad.err" || fail "bad --rate: exit $rc, want 2 naming --rate"
rc=0
"$SIM" --busy 1.5 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "bad --busy share: exit $rc, want 2"
ok "command line: --help, usage errors exit 2"

# ---------------------------------------------------------------- shapes
start_sim a --enterprises 2 --departments 12 --users-per-dept 4 --seed 7 --rate 100000
[ "$(status a GET /healthz)" = 200 ] || fail "/healthz"
T=$(get a "/cgi-bin/gettoken?corpid=wwsim0002&corpsecret=secret-wwsim0002")
[ "$(errcode "$T")" = 0 ] || fail "gettoken: $T"
expect "$T" '(.access_token | type == "string" and length > 10) and .expires_in == 7200' "gettoken shape"
TOK2=$(echo "$T" | jq -r .access_token)
[ "$(errcode "$(get a "/cgi-bin/gettoken?corpid=wwsim0002&corpsecret=wrong")")" = 40001 ] || fail "wrong secret"
[ "$(errcode "$(get a "/cgi-bin/gettoken?corpid=wwsim0003&corpsecret=secret-wwsim0003")")" = 40013 ] ||
    fail "unknown corpid"
[ "$(errcode "$(get a "/cgi-bin/gettoken?corpsecret=x")")" = 41002 ] || fail "missing corpid"
[ "$(errcode "$(get a "/cgi-bin/gettoken?corpid=wwsim0001")")" = 41004 ] || fail "missing secret"

D=$(get a "/cgi-bin/department/list?access_token=$TOK2")
[ "$(errcode "$D")" = 0 ] || fail "department/list: $D"
expect "$D" '.department | length == 12' "department/list count"
expect "$D" '.department | all(has("id") and (.name|type=="string") and (.parentid|type=="number") and (.order|type=="number"))' \
    "department fields"
expect "$D" '[.department[] | select(.id == 1)][0].parentid == 0' "root department"
expect "$D" '.department | all(.id == 1 or (.parentid >= 1 and .parentid < .id))' "tree under 1"
SUB=$(get a "/cgi-bin/department/list?access_token=$TOK2&id=2")
expect "$SUB" '.errcode == 0 and (.department | length >= 1) and .department[0].id == 2' "department/list?id=2"
[ "$(errcode "$(get a "/cgi-bin/department/list?access_token=$TOK2&id=99")")" = 60003 ] || fail "unknown id"

U=$(get a "/cgi-bin/user/list?access_token=$TOK2&department_id=3&fetch_child=0")
[ "$(errcode "$U")" = 0 ] || fail "user/list: $U"
expect "$U" '.userlist | length >= 4' "user/list members"
expect "$U" '.userlist | all(
    (.userid|type=="string") and (.name|type=="string") and (.mobile|test("^1[0-9]{10}$")) and
    (.email|type=="string") and (.position|type=="string") and (.status|type=="number") and
    (.gender|type=="string") and any(.department[]; . == 3) and
    (.order|length) == (.department|length) and (.is_leader_in_dept|length) == (.department|length) and
    (.main_department as $m | any(.department[]; . == $m)))' "user/list member fields"
[ "$(errcode "$(get a "/cgi-bin/user/list?access_token=$TOK2&department_id=99")")" = 60003 ] ||
    fail "user/list unknown department"
[ "$(errcode "$(get a "/cgi-bin/user/list?access_token=$TOK2")")" = 40058 ] || fail "user/list without department_id"

UID3=$(echo "$U" | jq -r '.userlist[0].userid')
MOB3=$(echo "$U" | jq -r '.userlist[0].mobile')
G=$(get a "/cgi-bin/user/get?access_token=$TOK2&userid=$UID3")
[ "$(errcode "$G")" = 0 ] || fail "user/get: $G"
expect "$G" ".userid == \"$UID3\" and .mobile == \"$MOB3\" and (.department|type==\"array\")" "user/get shape"
[ "$(errcode "$(get a "/cgi-bin/user/get?access_token=$TOK2&userid=nobody")")" = 60111 ] || fail "user/get unknown"
[ "$(errcode "$(get a "/cgi-bin/user/get?access_token=$TOK2")")" = 41009 ] || fail "user/get without userid"
R=$(post a "/cgi-bin/user/getuserid?access_token=$TOK2" "{\"mobile\":\"$MOB3\"}")
[ "$(errcode "$R")" = 0 ] && expect "$R" ".userid == \"$UID3\"" "getuserid known" || fail "getuserid: $R"
[ "$(errcode "$(post a "/cgi-bin/user/getuserid?access_token=$TOK2" '{"mobile":"10000000000"}')")" = 46004 ] ||
    fail "getuserid unknown mobile"
[ "$(errcode "$(post a "/cgi-bin/user/getuserid?access_token=$TOK2" 'garbage')")" = 40058 ] ||
    fail "getuserid garbage body"
# A mobile of the other enterprise is unknown here.
TOK1=$(token a wwsim0001)
[ "$(errcode "$(post a "/cgi-bin/user/getuserid?access_token=$TOK1" "{\"mobile\":\"$MOB3\"}")")" = 46004 ] ||
    fail "getuserid across enterprises"
[ "$(errcode "$(get a "/cgi-bin/user/list?department_id=3")")" = 41001 ] || fail "missing token"
[ "$(errcode "$(get a "/cgi-bin/user/list?access_token=bogus&department_id=3")")" = 40014 ] || fail "bogus token"
[ "$(status a GET "/cgi-bin/user/getuserid?access_token=$TOK1")" = 405 ] || fail "getuserid by GET"
ok "API shapes and error codes"

# The directory: /sim/org is exactly what user/list serves, mobiles unique, some
# members in several departments.
get a /sim/org >"$WORK/org.json"
python3 - "${PORT[a]}" "$WORK/org.json" <<'EOF' || fail "directory check"
import json, sys, urllib.request
port, org = sys.argv[1], json.load(open(sys.argv[2]))
base = "http://127.0.0.1:%s/cgi-bin" % port
def get(path):
    return json.load(urllib.request.urlopen(base + path, timeout=5))
assert [c["corp_id"] for c in org["corps"]] == ["wwsim0001", "wwsim0002"], org.keys()
mobiles = set()
for c in org["corps"]:
    cid = c["corp_id"]
    tok = get("/gettoken?corpid=%s&corpsecret=secret-%s" % (cid, cid))["access_token"]
    assert len(c["departments"]) == 12 and c["departments_total"] == 12
    assert len(c["users"]) == 12 * 4 == c["users_total"], len(c["users"])
    served = {}
    for d in get("/department/list?access_token=" + tok)["department"]:
        for u in get("/user/list?access_token=%s&department_id=%d" % (tok, d["id"]))["userlist"]:
            s = served.setdefault(u["userid"], dict(u, seen=[]))
            s["seen"].append(d["id"])
    want = {u["userid"]: u for u in c["users"]}
    assert set(served) == set(want), (cid, set(served) ^ set(want))
    for uid, u in want.items():
        s = served[uid]
        assert sorted(s["seen"]) == sorted(u["department"]), (uid, s["seen"], u["department"])
        for k in ("name", "mobile", "email", "position", "status", "main_department", "department"):
            assert s[k] == u[k], (uid, k, s[k], u[k])
        assert len(u["mobile"]) == 11 and u["mobile"].isdigit() and u["mobile"] not in mobiles
        mobiles.add(u["mobile"])
    assert any(len(u["department"]) > 1 for u in c["users"]), "no multi-department member"
print("directory consistent: %d mobiles" % len(mobiles))
EOF
ONE=$(get a "/sim/org?corp_id=wwsim0002")
expect "$ONE" '.corps | length == 1 and .[0].corp_id == "wwsim0002"' "/sim/org?corp_id="
[ "$(status a GET "/sim/org?corp_id=wwsim0042")" = 404 ] || fail "/sim/org unknown corp"
start_sim a2 --enterprises 2 --departments 12 --users-per-dept 4 --seed 7
start_sim a3 --enterprises 2 --departments 12 --users-per-dept 4 --seed 8
cmp -s <(get a /sim/org) <(get a2 /sim/org) || fail "same seed, different directory"
cmp -s <(get a /sim/org) <(get a3 /sim/org) && fail "different seed, same directory"
stop_sim a2
stop_sim a3
ok "directory: /sim/org matches what the API serves; deterministic by seed"
stop_sim a

# ---------------------------------------------------------------- rate window
start_sim r --departments 3 --users-per-dept 2
TOK=$(token r wwsim0001)
sleep 1.1 # gettoken counted; let it leave the window
URLS=()
for _ in $(seq 1 11); do URLS+=("http://127.0.0.1:${PORT[r]}/cgi-bin/user/list?access_token=$TOK&department_id=2"); done
BURST=$(curl -sS --max-time 5 "${URLS[@]}" | jq -s -c '[.[].errcode]')
[ "$BURST" = "[0,0,0,0,0,0,0,0,0,0,45009]" ] || fail "burst of 11: $BURST, want exactly the 11th refused"
S=$(get r /sim/stats)
expect "$S" '.corps[0].violations == 1 and .corps[0].max_1s == 11 and .corps[0].errcodes["45009"] == 1' \
    "stats after the burst"
sleep 1.1
post r /sim/reset-stats '' >/dev/null
for _ in $(seq 1 10); do
    c=$(errcode "$(get r "/cgi-bin/user/list?access_token=$TOK&department_id=2")")
    [ "$c" = 0 ] || fail "10 requests spread over 1.1 s: got errcode $c"
    sleep 0.11
done
S=$(get r /sim/stats)
expect "$S" '.corps[0].violations == 0 and .corps[0].max_1s <= 10 and .corps[0].requests == 10' \
    "stats after 10 spread over 1.1 s"
# gettoken counts toward the same window.
sleep 1.1
curl -sS --max-time 5 "${URLS[@]:0:10}" >/dev/null
[ "$(errcode "$(get r "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")")" = 45009 ] ||
    fail "gettoken as the 11th request in a second was not refused"
ok "rate window: burst of 11 -> one 45009; 10 over 1.1 s -> none; gettoken counts"
stop_sim r

# ---------------------------------------------------------------- token expiry
start_sim t --token-ttl-s 1 --rate 1000 --departments 2 --users-per-dept 1
T1=$(get t "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")
expect "$T1" '.expires_in == 1' "expires_in follows --token-ttl-s"
TOK=$(echo "$T1" | jq -r .access_token)
[ "$(errcode "$(get t "/cgi-bin/user/list?access_token=$TOK&department_id=1")")" = 0 ] || fail "fresh token"
sleep 1.2
[ "$(errcode "$(get t "/cgi-bin/user/list?access_token=$TOK&department_id=1")")" = 42001 ] ||
    fail "expired token is not 42001"
TOKB=$(token t wwsim0001)
[ "$TOKB" != "$TOK" ] || fail "gettoken after expiry returned the old token"
[ "$(errcode "$(get t "/cgi-bin/user/list?access_token=$TOKB&department_id=1")")" = 0 ] || fail "new token"
expect "$(post t /sim/expire-tokens '')" '.expired == 1' "expire-tokens"
[ "$(errcode "$(get t "/cgi-bin/user/list?access_token=$TOKB&department_id=1")")" = 42001 ] ||
    fail "force-expired token is not 42001"
TOKC=$(token t wwsim0001)
post t "/sim/expire-tokens?mode=invalid&corp_id=wwsim0001" '' >/dev/null
[ "$(errcode "$(get t "/cgi-bin/user/get?access_token=$TOKC&userid=u000001")")" = 40014 ] ||
    fail "invalidated token is not 40014"
[ "$(status t POST "/sim/expire-tokens?mode=later")" = 400 ] || fail "bad expire mode"
expect "$(get t /sim/stats)" '.corps[0].tokens_issued == 3 and .corps[0].by_path.gettoken == 3' "tokens_issued"
ok "tokens: expiry 42001, forced expiry, invalidation 40014"
stop_sim t

# ---------------------------------------------------------------- concurrency cap
start_sim c --max-inflight 3 --latency-ms 1500 --rate 1000 --departments 2 --users-per-dept 1
TOK=$(token c wwsim0001)
concurrent5() {
    local i
    rm -f "$WORK"/conc.?
    for i in 1 2 3 4 5; do
        curl -sS --max-time 5 "http://127.0.0.1:${PORT[c]}/cgi-bin/user/list?access_token=$TOK&department_id=1" \
            >"$WORK/conc.$i" &
        BGPIDS+=($!)
    done
    wait "${BGPIDS[@]}" || true
    BGPIDS=()
    cat "$WORK"/conc.? | jq -s -c '[.[].errcode] | sort'
}
GOT=$(concurrent5)
[ "$GOT" = "[0,0,0,45009,45009]" ] || fail "5 concurrent with --max-inflight 3: $GOT"
expect "$(get c /sim/stats)" '.corps[0].inflight_violations == 2 and .total.max_inflight >= 4 and .total.inflight == 0' \
    "concurrency stats"
expect "$(post c /sim/limits '{"inflight_errcode":45033}')" '.inflight_errcode == 45033' "/sim/limits"
GOT=$(concurrent5)
[ "$GOT" = "[0,0,0,45033,45033]" ] || fail "5 concurrent with errcode 45033: $GOT"
[ "$(status c POST /sim/limits '{"rate":-1}')" = 400 ] || fail "bad /sim/limits"
ok "concurrency: above --max-inflight answers 45009 (or 45033)"
stop_sim c

# ---------------------------------------------------------------- faults
start_sim f --enterprises 2 --rate 100000 --departments 5 --users-per-dept 2
TOK=$(token f wwsim0001)
TOK2=$(token f wwsim0002)
UL="/cgi-bin/user/list?access_token=$TOK&department_id=2"
post f /sim/faults '{"http500_next":1}' >/dev/null
[ "$(status f GET "$UL")" = 500 ] || fail "http500_next"
[ "$(errcode "$(get f "$UL")")" = 0 ] || fail "after http500_next"
post f /sim/faults '{"busy":1}' >/dev/null
[ "$(errcode "$(get f "$UL")")" = -1 ] || fail "busy share 1"
post f /sim/faults '{"busy":0,"malformed_next":1}' >/dev/null
BODY=$(get f "$UL")
echo "$BODY" | python3 -c 'import json,sys; json.load(sys.stdin)' 2>/dev/null && fail "malformed body parsed: $BODY"
[ "$(errcode "$(get f "$UL")")" = 0 ] || fail "after malformed_next"
post f /sim/faults '{"fail_dept":3}' >/dev/null
for _ in 1 2 3; do
    [ "$(errcode "$(get f "/cgi-bin/user/list?access_token=$TOK&department_id=3")")" = -1 ] || fail "fail_dept"
done
[ "$(errcode "$(get f "$UL")")" = 0 ] || fail "other departments while fail_dept"
post f /sim/faults '{"fail_dept_errcode":500}' >/dev/null
[ "$(status f GET "/cgi-bin/user/list?access_token=$TOK&department_id=3")" = 500 ] || fail "fail_dept as HTTP 500"
post f /sim/faults '{"fail_dept_errcode":-1,"fail_dept_corp":"wwsim0002"}' >/dev/null
[ "$(errcode "$(get f "/cgi-bin/user/list?access_token=$TOK&department_id=3")")" = 0 ] ||
    fail "fail_dept_corp limits it to one enterprise"
[ "$(errcode "$(get f "/cgi-bin/user/list?access_token=$TOK2&department_id=3")")" = -1 ] || fail "fail_dept_corp"
post f /sim/faults '{"fail_dept":0,"hang_next":1}' >/dev/null
rc=0
curl -s --max-time 1 "http://127.0.0.1:${PORT[f]}$UL" >/dev/null || rc=$?
[ "$rc" = 28 ] || fail "hang: curl exit $rc, want 28 (timeout)"
[ "$(errcode "$(get f "$UL")")" = 0 ] || fail "after a hang"
post f /sim/faults '{"latency_ms":300,"jitter_ms":100}' >/dev/null
T=$(curl -sS -o /dev/null --max-time 5 -w '%{time_total}' "http://127.0.0.1:${PORT[f]}$UL")
python3 -c "import sys; t=float('$T'); sys.exit(0 if 0.29 <= t < 2.0 else 1)" || fail "latency 300+100 ms took $T s"
post f /sim/faults '{"latency_ms":0,"jitter_ms":0,"busy":0.5,"paths":["user/list"]}' >/dev/null
[ "$(errcode "$(get f "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")")" = 0 ] ||
    fail "faults applied outside their paths"
URLS=()
for _ in $(seq 1 200); do URLS+=("http://127.0.0.1:${PORT[f]}$UL"); done
NBUSY=$(curl -sS --max-time 10 "${URLS[@]}" | jq -s '[.[] | select(.errcode == -1)] | length')
[ "$NBUSY" -ge 60 ] && [ "$NBUSY" -le 140 ] || fail "busy share 0.5 gave $NBUSY of 200"
[ "$(status f POST /sim/faults '{"busy":2}')" = 400 ] || fail "share above 1 accepted"
[ "$(status f POST /sim/faults '{"bsy":0.1}')" = 400 ] || fail "unknown fault key accepted"
[ "$(status f POST /sim/faults 'nope')" = 400 ] || fail "non-JSON faults accepted"
expect "$(get f /sim/faults)" '.busy == 0.5 and .paths == ["user/list"]' "GET /sim/faults"
post f /sim/faults '{"reset":true}' >/dev/null
expect "$(get f /sim/faults)" '.busy == 0 and (.paths | length) == 11' "faults reset"
S=$(get f /sim/stats)
expect "$S" ".total.faults.http500 == 1 and .total.faults.malformed == 1 and .total.faults.hang == 1 and
    .total.faults.busy == (1 + $NBUSY) and .total.faults.fail_dept == 5" "fault counters"
ok "faults: HTTP 500, errcode -1, malformed, failing department, hang, latency, shares, paths"
stop_sim f

# Faults given as flags at start.
start_sim f2 --http500 1 --fault-paths gettoken --fail-dept 2 --departments 3
[ "$(status f2 GET "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")" = 500 ] ||
    fail "--http500 1 --fault-paths gettoken"
expect "$(get f2 /sim/faults)" '.http500 == 1 and .fail_dept == 2 and .paths == ["gettoken"]' "fault flags"
stop_sim f2 INT
ok "fault flags; SIGINT exits 0"

# ---------------------------------------------------------------- stats per port
"$SIM" --port 0 --port 0 --enterprises 2 --rate 1000 --departments 4 --log-format text \
    >"$WORK/s.out" 2>"$WORK/s.err" &
PID[s]=$!
for _ in $(seq 1 100); do grep -q '^listening ' "$WORK/s.out" 2>/dev/null && break; sleep 0.05; done
read -r word P1 P2 REST <"$WORK/s.out" || true
[ "$word" = listening ] && [ -n "$P1" ] && [ -n "$P2" ] && [ -z "${REST:-}" ] && [ "$P1" != "$P2" ] ||
    fail "two --port: first line '$(head -1 "$WORK/s.out")'"
PORT[s]=$P1
PORT[s2]=$P2
TA=$(token s wwsim0001)
for d in 2 2 3; do get s "/cgi-bin/user/list?access_token=$TA&department_id=$d" >/dev/null; done
TB=$(token s2 wwsim0002)
get s2 "/cgi-bin/user/list?access_token=$TB&department_id=4" >/dev/null
S=$(get s /sim/stats)
expect "$S" '.corps[0].corp_id == "wwsim0001" and .corps[0].by_path["user/list"] == 3 and
    .corps[0].user_list_calls == {"2":2,"3":1} and .corps[0].refetched_departments == 1 and
    .corps[0].refetched_ok_departments == 1 and .corps[0].departments_fetched == 2 and
    .corps[0].tokens_issued == 1 and .corps[1].tokens_issued == 1' "per-enterprise stats"
expect "$S" "(.ports | map({(.port|tostring): .requests}) | add) == {\"$P1\":4,\"$P2\":2}" "per-port requests"
expect "$S" "(.corps[0].by_port | map({(.port|tostring): .requests}) | add) == {\"$P1\":4,\"$P2\":0}" \
    "per-port-per-enterprise requests"
expect "$S" '.corps[0].first_request_ms <= .corps[0].last_request_ms and
    (.corps[0].first_request | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$")) and
    .corps[0].max_1s >= 1 and .corps[0].max_1s <= 4' \
    "first/last request times"
expect "$S" '.limits.rate == 1000 and .enterprises == 2' "limits in stats"
expect "$(get s '/sim/stats?corp_id=wwsim0002')" '(.corps | length) == 1 and .corps[0].requests == 2' \
    "stats?corp_id="
[ "$(status s GET '/sim/stats?corp_id=wwsim0099')" = 404 ] || fail "stats for unknown corp"
post s /sim/reset-stats '' >/dev/null
expect "$(get s /sim/stats)" '.total.requests == 0 and .corps[0].user_list_calls == {} and
    .corps[0].first_request == null' "reset-stats"
ok "stats per enterprise, per port, per department; reset"
stop_sim s

# ---------------------------------------------------------------- mutations
start_sim m --departments 6 --users-per-dept 3 --rate 1000 --seed 5
TOK=$(token m wwsim0001)
members() { get m "/cgi-bin/user/list?access_token=$TOK&department_id=$1" | jq -c '[.userlist[].userid]'; }
get m "/cgi-bin/user/list?access_token=$TOK&department_id=2" >/dev/null # pre-render, then invalidate
R=$(post m /sim/mutate '{"corp_id":"wwsim0001","ops":[{"op":"add","userid":"zhang.san","name":"张三","mobile":"19912345678","department":[2,3]}]}')
expect "$R" '.errcode == 0 and .added == ["zhang.san"]' "mutate add"
members 2 | jq -e 'index("zhang.san") != null' >/dev/null || fail "added member missing from user/list 2"
members 3 | jq -e 'index("zhang.san") != null' >/dev/null || fail "added member missing from user/list 3"
expect "$(post m "/cgi-bin/user/getuserid?access_token=$TOK" '{"mobile":"19912345678"}')" '.userid == "zhang.san"' \
    "getuserid of an added member"
post m /sim/mutate '{"ops":[{"op":"rename","userid":"zhang.san","name":"张叁"}]}' >/dev/null
expect "$(get m "/cgi-bin/user/get?access_token=$TOK&userid=zhang.san")" '.name == "张叁"' "rename via user/get"
get m "/cgi-bin/user/list?access_token=$TOK&department_id=3" | jq -e '.userlist | any(.name == "张叁")' >/dev/null ||
    fail "rename not in user/list"
post m /sim/mutate '{"ops":[{"op":"move","userid":"zhang.san","department":[4]}]}' >/dev/null
members 2 | jq -e 'index("zhang.san") == null' >/dev/null || fail "moved member still in department 2"
members 4 | jq -e 'index("zhang.san") != null' >/dev/null || fail "moved member not in department 4"
expect "$(get m "/cgi-bin/user/get?access_token=$TOK&userid=zhang.san")" '.department == [4] and .main_department == 4' \
    "move via user/get"
post m /sim/mutate '{"ops":[{"op":"remove","userid":"zhang.san"}]}' >/dev/null
[ "$(errcode "$(get m "/cgi-bin/user/get?access_token=$TOK&userid=zhang.san")")" = 60111 ] || fail "removed: user/get"
[ "$(errcode "$(post m "/cgi-bin/user/getuserid?access_token=$TOK" '{"mobile":"19912345678"}')")" = 46004 ] ||
    fail "removed: getuserid"
get m /sim/org | jq -e '.corps[0].users | all(.userid != "zhang.san")' >/dev/null || fail "removed: /sim/org"
R=$(post m /sim/mutate '{"ops":[{"op":"add_dept","parentid":2,"name":"新部门"}]}')
NEWD=$(echo "$R" | jq '.departments_added[0]')
[ "$NEWD" = 7 ] || fail "add_dept: $R"
expect "$(get m "/cgi-bin/department/list?access_token=$TOK")" '.department | any(.id == 7 and .parentid == 2 and .name == "新部门")' \
    "added department listed"
post m /sim/mutate '{"ops":[{"op":"remove_dept","id":7}]}' >/dev/null
[ "$(errcode "$(get m "/cgi-bin/user/list?access_token=$TOK&department_id=7")")" = 60003 ] || fail "removed department"
[ "$(status m POST /sim/mutate '{"ops":[{"op":"remove","userid":"ghost"}]}')" = 404 ] || fail "mutate unknown userid"
[ "$(status m POST /sim/mutate '{"ops":[{"op":"fly"}]}')" = 400 ] || fail "mutate unknown op"
[ "$(status m POST /sim/mutate '{"ops":[{"op":"remove_dept","id":2}]}')" = 409 ] || fail "remove non-empty dept"
[ "$(status m POST /sim/mutate 'x')" = 400 ] || fail "mutate bad JSON"
# Random mutations: the same calls on the same seed give the same directory.
start_sim m2 --departments 6 --users-per-dept 3 --seed 5
RND='{"corp_id":"wwsim0001","random":{"add":3,"remove":2,"rename":2,"move":2}}'
R1=$(post m /sim/mutate "$RND")
R2=$(post m2 /sim/mutate "$RND")
expect "$R1" '(.added|length) == 3 and (.removed|length) == 2 and (.renamed|length) == 2 and (.moved|length) == 2' \
    "random mutate answer"
# m had extra explicit ops first, so compare m2 against a third sim that replays only RND.
start_sim m3 --departments 6 --users-per-dept 3 --seed 5
R3=$(post m3 /sim/mutate "$RND")
[ "$R2" = "$R3" ] || fail "random mutations differ between identical sims: $R2 vs $R3"
cmp -s <(get m2 /sim/org) <(get m3 /sim/org) || fail "random mutations left different directories"
ok "mutations: add, rename, move, remove, departments; random ones deterministic"
stop_sim m2
stop_sim m3

# ---------------------------------------------------------------- the answer cache
# c1 keeps rendered answers (the default), c0 renders every one (--cache-mb 0): the
# same flags, so every answer must be the same bytes, before and after mutations,
# and an answer kept before a mutation must never be served after it.
start_sim c1 --departments 6 --users-per-dept 3 --rate 1000 --seed 5
start_sim c0 --departments 6 --users-per-dept 3 --rate 1000 --seed 5 --cache-mb 0
T1=$(token c1 wwsim0001)
T0=$(token c0 wwsim0001)
same_answers() { # $1: what was just done
    local d
    for d in 1 2 3 4 5 6; do
        cmp -s <(get c1 "/cgi-bin/user/list?access_token=$T1&department_id=$d") \
            <(get c0 "/cgi-bin/user/list?access_token=$T0&department_id=$d") ||
            fail "user/list $d differs between the cached and the uncached sim $1"
    done
    cmp -s <(get c1 "/cgi-bin/department/list?access_token=$T1") \
        <(get c0 "/cgi-bin/department/list?access_token=$T0") ||
        fail "department/list differs between the cached and the uncached sim $1"
}
mutate_both() {
    post c1 /sim/mutate "$1" | jq -e '.errcode == 0' >/dev/null || fail "mutate $1"
    post c0 /sim/mutate "$1" | jq -e '.errcode == 0' >/dev/null || fail "mutate $1 (c0)"
}
same_answers "at start"
same_answers "served a second time"
ul1() { get c1 "/cgi-bin/user/list?access_token=$T1&department_id=$1"; }
dl1() { get c1 "/cgi-bin/department/list?access_token=$T1"; }
dl1 | jq -e '.department[] | select(.id == 1) | .department_leader == ["u000001"]' >/dev/null ||
    fail "u000001 should lead department 1"
mutate_both '{"ops":[{"op":"rename","userid":"u000001","name":"新名字"}]}'
ul1 1 | jq -e '.userlist | any(.userid == "u000001" and .name == "新名字")' >/dev/null ||
    fail "kept user/list served after a rename"
same_answers "after a rename"
mutate_both '{"ops":[{"op":"move","userid":"u000001","department":[2]}]}'
ul1 1 | jq -e '.userlist | all(.userid != "u000001")' >/dev/null || fail "kept user/list 1 served after a move"
ul1 2 | jq -e '.userlist | any(.userid == "u000001")' >/dev/null || fail "kept user/list 2 served after a move"
dl1 | jq -e '.department[] | select(.id == 1) | .department_leader == []' >/dev/null ||
    fail "kept department/list still names a leader who moved away"
same_answers "after a move"
mutate_both '{"ops":[{"op":"rename_dept","id":3,"name":"改名部"}]}'
dl1 | jq -e '.department | any(.id == 3 and .name == "改名部")' >/dev/null ||
    fail "kept department/list served after rename_dept"
mutate_both '{"random":{"add":4,"remove":3,"rename":3,"move":3}}'
same_answers "after random mutations"
ok "answer cache: same bytes as rendering every answer; mutations drop what they change"
stop_sim c1
stop_sim c0

# ---------------------------------------------------------------- two credentials, policy
start_sim p --enterprises 2 --departments 12 --users-per-dept 3 --rate 100000 --seed 3
TA=$(token p wwsim0001)
TC=$(ctoken p wwsim0001)
[ -n "$TC" ] && [ "$TC" != null ] && [ "$TC" != "$TA" ] || fail "contact-sync gettoken: '$TC' (app '$TA')"
[ "$(ctoken p wwsim0001)" = "$TC" ] && [ "$(token p wwsim0001)" = "$TA" ] || fail "the same token again, per credential"
[ "$(errcode "$(get p "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=contact-wwsim0002")")" = 40001 ] ||
    fail "another enterprise's contact secret"
TB=$(token p wwsim0002)
TBC=$(ctoken p wwsim0002)
expect "$(get p /sim/stats)" '.corps[0].tokens_issued == 2 and .corps[1].tokens_issued == 2' "tokens of both credentials"
expect "$(get p /sim/policy)" '.corps == [
    {"corp_id":"wwsim0001","contact_legacy_ips":null,"app_new":false,"visible_depts":null,"trusted_ips":null},
    {"corp_id":"wwsim0002","contact_legacy_ips":null,"app_new":false,"visible_depts":null,"trusted_ips":null}]' \
    "default policy"
UL1="/cgi-bin/user/list?department_id=1&access_token"
LEGACY=("/cgi-bin/department/list?access_token" "/cgi-bin/user/list?department_id=2&access_token"
    "/cgi-bin/user/get?userid=u000001&access_token")
NEWAPI=("/cgi-bin/department/simplelist?access_token" "/cgi-bin/department/get?id=2&access_token")
# Defaults: both credentials may call everything from anywhere.
for path in "${LEGACY[@]}" "${NEWAPI[@]}"; do
    for tok in "$TA" "$TC"; do
        [ "$(errcode "$(get_from 127.0.0.2 p "$path=$tok")")" = 0 ] || fail "default policy refused $path"
    done
done

# contact_legacy_ips: [] = no address may; a list = only those; null = anywhere again.
expect "$(post p /sim/policy '{"corp_id":"wwsim0001","contact_legacy_ips":[]}')" \
    '.corps == [{"corp_id":"wwsim0001","contact_legacy_ips":[],"app_new":false,"visible_depts":null,"trusted_ips":null}]' \
    "POST /sim/policy answers the enterprise's policy"
for path in "${LEGACY[@]}"; do
    refused "$(get p "$path=$TC")" 48009 "api forbidden" 127.0.0.1
    [ "$(errcode "$(get p "$path=$TA")")" = 0 ] || fail "48009 for the app token on $path"
    [ "$(errcode "$(get p "$path=$TBC")")" = 0 ] || fail "48009 in the other enterprise on $path"
done
for path in "${NEWAPI[@]}"; do
    [ "$(errcode "$(get p "$path=$TC")")" = 0 ] || fail "the contact token refused on $path"
done
[ "$(errcode "$(post p "/cgi-bin/user/list_id?access_token=$TC" '{"limit":5}')")" = 0 ] || fail "list_id with contact"
[ "$(errcode "$(post p "/cgi-bin/user/getuserid?access_token=$TC" '{"mobile":"10000000000"}')")" = 46004 ] ||
    fail "getuserid is not a legacy API"
post p /sim/policy '{"corp_id":"wwsim0001","contact_legacy_ips":["127.0.0.2"]}' >/dev/null
refused "$(get p "${LEGACY[1]}=$TC")" 48009 "api forbidden" 127.0.0.1
[ "$(errcode "$(get_from 127.0.0.2 p "${LEGACY[1]}=$TC")")" = 0 ] || fail "contact_legacy_ips lists 127.0.0.2"
refused "$(get_from 127.0.0.3 p "${LEGACY[2]}=$TC")" 48009 "api forbidden" 127.0.0.3
post p /sim/policy '{"corp_id":"wwsim0001","contact_legacy_ips":null}' >/dev/null
[ "$(errcode "$(get p "${LEGACY[1]}=$TC")")" = 0 ] || fail "contact_legacy_ips null"
ok "contact-sync credential: own tokens; contact_legacy_ips gives 48009 on the legacy APIs only, by source address"

# trusted_ips: app tokens (every API but gettoken) only from the listed addresses.
post p /sim/policy '{"trusted_ips":["127.0.0.1"]}' >/dev/null # every enterprise
[ "$(errcode "$(get p "$UL1=$TA")")" = 0 ] || fail "trusted 127.0.0.1 refused"
refused "$(get_from 127.0.0.2 p "$UL1=$TA")" 60020 "not allow to access from your ip" 127.0.0.2
refused "$(get_from 127.0.0.2 p "${NEWAPI[0]}=$TB")" 60020 "not allow to access from your ip" 127.0.0.2
refused "$(post_from 127.0.0.2 p "/cgi-bin/user/list_id?access_token=$TA" '{}')" 60020 \
    "not allow to access from your ip" 127.0.0.2
[ "$(errcode "$(get_from 127.0.0.2 p "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")")" = 0 ] ||
    fail "gettoken is not subject to trusted_ips"
[ "$(errcode "$(get_from 127.0.0.2 p "$UL1=$TC")")" = 0 ] || fail "trusted_ips applied to the contact token"
post p /sim/policy '{"corp_id":"wwsim0002","trusted_ips":null}' >/dev/null
[ "$(errcode "$(get_from 127.0.0.2 p "$UL1=$TB")")" = 0 ] || fail "trusted_ips null for wwsim0002"
refused "$(get_from 127.0.0.2 p "$UL1=$TA")" 60020 "not allow to access from your ip" 127.0.0.2
post p /sim/policy '{"trusted_ips":null}' >/dev/null
[ "$(errcode "$(get_from 127.0.0.2 p "$UL1=$TA")")" = 0 ] || fail "trusted_ips null"
ok "trusted_ips: 60020 for app tokens from 127.0.0.2 only, not for gettoken or the contact token"

# visible_depts: the app sees 2 and its subtree; contact tokens see everything.
get p '/sim/org?corp_id=wwsim0001' >"$WORK/porg.json"
post p /sim/policy '{"corp_id":"wwsim0001","visible_depts":[2]}' >/dev/null
get p "/cgi-bin/department/list?access_token=$TA" >"$WORK/vis.dl"
get p "/cgi-bin/department/simplelist?access_token=$TA" >"$WORK/vis.sl"
post p "/cgi-bin/user/list_id?access_token=$TA" '{}' >"$WORK/vis.li"
post p "/cgi-bin/user/list_id?access_token=$TC" '{}' >"$WORK/all.li"
get p "/cgi-bin/department/simplelist?access_token=$TC" >"$WORK/all.sl"
python3 - "${PORT[p]}" "$WORK" "$TA" "$TC" <<'EOF' || fail "visible range"
import json, re, sys, urllib.request
port, work, ta, tc = sys.argv[1:5]
org = json.load(open(work + "/porg.json"))["corps"][0]
parent = {d["id"]: d["parentid"] for d in org["departments"]}
def under2(d):
    while d:
        if d == 2:
            return True
        d = parent[d]
    return False
vis = sorted(d for d in parent if under2(d))
assert 1 < len(vis) < len(parent), vis
def load(name):
    return json.load(open(work + "/" + name))
def get(path):
    return json.load(urllib.request.urlopen("http://127.0.0.1:%s/cgi-bin/%s" % (port, path), timeout=5))
assert sorted(d["id"] for d in load("vis.dl")["department"]) == vis, "department/list"
assert sorted(d["id"] for d in load("vis.sl")["department_id"]) == vis, "department/simplelist"
assert sorted(d["id"] for d in load("all.sl")["department_id"]) == sorted(parent), "contact simplelist"
rows = load("vis.li")["dept_user"]
want = sorted((u["userid"], d) for u in org["users"] for d in u["department"] if under2(d))
assert sorted((r["userid"], r["department"]) for r in rows) == want, "list_id with the app token"
assert len(load("all.li")["dept_user"]) == sum(len(u["department"]) for u in org["users"])
shape = (r"^no privilege to access/modify contact/party/agent , hint: \[[^\]]+\], from ip: "
         r"127\.0\.0\.1, more info at https://open\.work\.weixin\.qq\.com/devtool/query\?e=60011$")
outside = [d for d in parent if not under2(d)]
for d in parent:
    for path in ("user/list?department_id=%d" % d, "department/get?id=%d" % d,
                 "department/list?id=%d" % d, "department/simplelist?id=%d" % d):
        a = get(path + "&access_token=" + ta)
        if d in outside:
            assert a["errcode"] == 60011 and re.match(shape, a["errmsg"]), (path, a)
        else:
            assert a["errcode"] == 0, (path, a)
        assert get(path + "&access_token=" + tc)["errcode"] == 0, ("contact", path)
for u in org["users"]:
    a = get("user/get?userid=%s&access_token=%s" % (u["userid"], ta))
    if any(under2(d) for d in u["department"]):
        assert a["errcode"] == 0, (u["userid"], a)
    else:
        assert a["errcode"] == 60011, (u["userid"], a)
# Unknown ids keep their own answers.
assert get("user/list?department_id=99&access_token=" + ta)["errcode"] == 60003
assert get("user/get?userid=nobody&access_token=" + ta)["errcode"] == 60111
print("visible range: %d of %d departments" % (len(vis), len(parent)))
EOF
# Checks in order: 60020 before 60011.
post p /sim/policy '{"corp_id":"wwsim0001","trusted_ips":["127.0.0.1"]}' >/dev/null
refused "$(get_from 127.0.0.2 p "$UL1=$TA")" 60020 "not allow to access from your ip" 127.0.0.2
post p /sim/policy '{"corp_id":"wwsim0001","trusted_ips":null,"visible_depts":null}' >/dev/null
[ "$(errcode "$(get p "$UL1=$TA")")" = 0 ] || fail "visible_depts null"
ok "visible_depts: 60011 outside the subtree; lists keep to it; contact tokens see all"

# app_new: app answers lack exactly those keys (absent, not empty); contact ones keep them.
post p /sim/policy '{"app_new":true}' >/dev/null
for d in 1 2 3; do
    get p "/cgi-bin/user/list?department_id=$d&access_token=$TA" >"$WORK/new.app.$d"
    get p "/cgi-bin/user/list?department_id=$d&access_token=$TC" >"$WORK/new.contact.$d"
done
get p "/cgi-bin/user/get?userid=u000002&access_token=$TA" >"$WORK/new.app.get"
get p "/cgi-bin/user/get?userid=u000002&access_token=$TC" >"$WORK/new.contact.get"
python3 - "$WORK" <<'EOF' || fail "app_new stripping"
import json, sys
w = sys.argv[1]
HIDDEN = {"mobile", "email", "biz_mail", "avatar", "thumb_avatar", "gender", "qr_code", "address"}
def same_but_hidden(full, lite):
    assert HIDDEN <= set(full), set(full)
    assert set(lite) == set(full) - HIDDEN, set(full) ^ set(lite)
    assert all(lite[k] == full[k] for k in lite)
for d in (1, 2, 3):
    a = json.load(open("%s/new.app.%d" % (w, d)))["userlist"]
    c = json.load(open("%s/new.contact.%d" % (w, d)))["userlist"]
    assert len(a) == len(c) > 0
    for x, y in zip(c, a):
        same_but_hidden(x, y)
full, lite = json.load(open(w + "/new.contact.get")), json.load(open(w + "/new.app.get"))
same_but_hidden(full, lite)
EOF
post p /sim/policy '{"app_new":false}' >/dev/null
expect "$(get p "/cgi-bin/user/list?department_id=2&access_token=$TA")" \
    '.userlist | all(has("mobile") and has("avatar") and has("qr_code"))' "app_new false"
ok "app_new: user/list and user/get without mobile, email, biz_mail, avatar, thumb_avatar, gender, qr_code, address"

# Validation (all or nothing, the bad key named), reset, flags at start.
post p /sim/policy '{"corp_id":"wwsim0001","app_new":true}' >/dev/null
for body in '{"app_new":false,"trusted_ips":["not an ip"]}' '{"app_new":false,"visible_depts":[-1]}' \
    '{"app_new":false,"contact_legacy_ips":"127.0.0.1"}' '{"app_new":"yes"}'; do
    key=$(echo "$body" | jq -r 'keys_unsorted | last')
    [ "$(status p POST /sim/policy "$body")" = 400 ] || fail "bad policy accepted: $body"
    curl -sS -X POST --data-binary "$body" "http://127.0.0.1:${PORT[p]}/sim/policy" | grep -q "$key" ||
        fail "the 400 for $body does not name $key"
done
[ "$(status p POST /sim/policy '{"trusted":[]}')" = 400 ] || fail "unknown policy key accepted"
[ "$(status p POST /sim/policy '{"corp_id":"wwsim0042","app_new":true}')" = 404 ] || fail "unknown corp"
[ "$(status p GET '/sim/policy?corp_id=wwsim0042')" = 404 ] || fail "GET unknown corp"
expect "$(get p '/sim/policy?corp_id=wwsim0001')" '.corps[0].app_new == true' "nothing changed by bad POSTs"
expect "$(post p /sim/policy '{"reset":true,"contact_legacy_ips":["::1"]}')" '.corps | all(.app_new == false and
    .contact_legacy_ips == ["::1"] and .visible_depts == null and .trusted_ips == null)' "reset"
S=$(get p /sim/stats)
expect "$S" '.total.errcodes["48009"] == .total.forbidden and .total.forbidden == 5 and
    .total.errcodes["60020"] == .total.untrusted_ip and .total.untrusted_ip == 5 and
    .total.errcodes["60011"] == .total.no_privilege and .total.no_privilege >= 10' "policy counters"
expect "$S" '(.corps[0].by_ip | map(.ip) | sort) == ["127.0.0.1","127.0.0.2","127.0.0.3"] and
    (.corps[0].by_ip[] | select(.ip == "127.0.0.3") | .requests == 1 and .forbidden == 1) and
    (.corps[1].by_ip[] | select(.ip == "127.0.0.2") | .untrusted_ip == 1)' "by_ip: which host made which calls"
stop_sim p
start_sim p2 --enterprises 2 --departments 4 --trusted-ips 127.0.0.1,127.0.0.5 --contact-legacy-ips none \
    --app-new 1 --visible-depts 2,3
expect "$(get p2 /sim/policy)" '.corps | length == 2 and all(.trusted_ips == ["127.0.0.1","127.0.0.5"] and
    .contact_legacy_ips == [] and .app_new == true and .visible_depts == [2,3])' "policy flags"
refused "$(get p2 "/cgi-bin/department/list?access_token=$(ctoken p2 wwsim0002)")" 48009 "api forbidden" 127.0.0.1
stop_sim p2
ok "policy: validation, reset, stats counters and by_ip; flags at start"

# ---------------------------------------------------------------- user/list_id, simplelist, department/get
start_sim l --enterprises 2 --departments 15 --users-per-dept 3 --rate 100000 --seed 11
TL=$(token l wwsim0001)
TL2=$(token l wwsim0002)
python3 - "${PORT[l]}" "$TL" "$TL2" <<'EOF' || fail "user/list_id paging"
import json, sys, urllib.request
port, tok, tok2 = sys.argv[1:4]
base = "http://127.0.0.1:%s" % port
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    return json.load(urllib.request.urlopen(base + path, data=data, timeout=5))
def org():
    return call("/sim/org?corp_id=wwsim0001")["corps"][0]
def memberships(o):
    return sorted((u["userid"], d) for u in o["users"] for d in u["department"])
def page(cursor, limit, t=tok):
    body = {"limit": limit}
    if cursor is not None:
        body["cursor"] = cursor
    a = call("/cgi-bin/user/list_id?access_token=" + t, body)
    assert a["errcode"] == 0 and a["errmsg"] == "ok", a
    assert len(a["dept_user"]) <= limit
    c = a["next_cursor"]
    assert isinstance(c, str) and (c == "" or not c.isdigit()), c
    return a["dept_user"], c
def collect(limit, between=None):
    rows, cursor, n = [], None, 0
    while True:
        got, cursor = page(cursor, limit)
        rows += [(r["userid"], r["department"]) for r in got]
        n += 1
        if not cursor:
            return rows, n
        if between:
            between(n)
want = memberships(org())
assert any(len(u["department"]) > 1 for u in org()["users"])
for limit in (1, 2, 7, 10000):
    rows, n = collect(limit)
    assert sorted(rows) == want, (limit, len(rows), len(want))
    assert len(set(rows)) == len(rows)
    assert n == max(1, -(-len(want) // limit)), (limit, n)
# No limit: the default 10000, one page.
a = call("/cgi-bin/user/list_id?access_token=" + tok, {})
assert a["next_cursor"] == "" and len(a["dept_user"]) == len(want)
a = call("/cgi-bin/user/list_id?access_token=" + tok, {"cursor": ""})
assert len(a["dept_user"]) == len(want)
# Mutations between pages: a member added (at the end), one not listed yet removed,
# one renamed, one moved: the pages give exactly the memberships of the end.
users = org()["users"]
last = users[-1]["userid"]
def mutate(n):
    if n == 1:
        r = call("/sim/mutate", {"corp_id": "wwsim0001", "ops": [
            {"op": "add", "userid": "between.pages", "department": [2, 5]},
            {"op": "remove", "userid": last},
            {"op": "rename", "userid": users[-5]["userid"], "name": "改过"},
            {"op": "move", "userid": users[-3]["userid"], "department": [4, 6]}]})
        assert r["errcode"] == 0, r
rows, n = collect(9, mutate)
assert n > 2
end = memberships(org())
assert sorted(rows) == end, set(rows) ^ set(end)
assert ("between.pages", 5) in rows and not any(u == last for u, _ in rows)
# Errors: 40058 naming limit, or the cursor.
def err(body, t=tok):
    return call("/cgi-bin/user/list_id?access_token=" + t, body)
for bad in ({"limit": 0}, {"limit": 10001}, {"limit": "5"}, {"limit": 2.5}):
    a = err(bad)
    assert a["errcode"] == 40058 and "limit" in a["errmsg"], (bad, a)
_, c = page(None, 3)
for bad in ("123", "x" * 20, c[:-1] + ("0" if c[-1] != "0" else "1"), c.upper()):
    a = err({"cursor": bad, "limit": 3})
    assert a["errcode"] == 40058 and "cursor" in a["errmsg"], (bad, a)
a = err({"cursor": c, "limit": 3}, tok2)  # another enterprise's cursor
assert a["errcode"] == 40058, a
req = urllib.request.Request(base + "/cgi-bin/user/list_id?access_token=" + tok, data=b"garbage")
a = json.load(urllib.request.urlopen(req, timeout=5))
assert a["errcode"] == 40058, a
print("list_id: %d memberships, paging and mutations ok" % len(end))
EOF
python3 - "${PORT[l]}" "$TL" <<'EOF' || fail "department/simplelist and department/get"
import json, sys, urllib.request
port, tok = sys.argv[1:3]
base = "http://127.0.0.1:%s" % port
def get(path):
    return json.load(urllib.request.urlopen(base + path, timeout=5))
org = get("/sim/org?corp_id=wwsim0001")["corps"][0]
depts = {d["id"]: d for d in org["departments"]}
a = get("/cgi-bin/department/simplelist?access_token=" + tok)
assert a["errcode"] == 0 and a["errmsg"] == "ok"
assert sorted(a["department_id"], key=lambda d: d["id"]) == sorted(
    ({"id": d["id"], "parentid": d["parentid"], "order": d["order"]} for d in depts.values()),
    key=lambda d: d["id"])
def subtree(root):
    out = []
    for i in depts:
        d = i
        while d and d != root:
            d = depts[d]["parentid"]
        if d == root:
            out.append(i)
    return sorted(out)
full = {d["id"]: d for d in get("/cgi-bin/department/list?access_token=" + tok)["department"]}
for i in depts:
    s = get("/cgi-bin/department/simplelist?id=%d&access_token=%s" % (i, tok))
    assert sorted(d["id"] for d in s["department_id"]) == subtree(i), i
    g = get("/cgi-bin/department/get?id=%d&access_token=%s" % (i, tok))
    assert g["errcode"] == 0 and g["department"] == full[i], (g, full[i])
    assert set(g["department"]) == {"id", "name", "name_en", "department_leader", "parentid", "order"}
    assert g["department"]["name"] == depts[i]["name"] and g["department"]["parentid"] == depts[i]["parentid"]
for path, code in (("simplelist?id=99", 60003), ("simplelist?id=x", 40058), ("get?id=99", 60003),
                   ("get?id=x", 40058), ("get?id=0", 40058), ("get?x=1", 40058)):
    a = get("/cgi-bin/department/%s&access_token=%s" % (path, tok))
    assert a["errcode"] == code, (path, a)
EOF
# The new paths are paths like the others: faults, by_path, tokens.
post l /sim/faults '{"busy_next":1,"paths":["user/list_id"]}' >/dev/null
[ "$(errcode "$(get l "/cgi-bin/department/get?id=1&access_token=$TL")")" = 0 ] || fail "fault outside its path"
[ "$(errcode "$(post l "/cgi-bin/user/list_id?access_token=$TL" '{}')")" = -1 ] || fail "busy_next on user/list_id"
post l /sim/faults '{"reset":true}' >/dev/null
[ "$(errcode "$(get l "/cgi-bin/department/simplelist?access_token=bogus")")" = 40014 ] || fail "simplelist bogus token"
[ "$(errcode "$(post l "/cgi-bin/user/list_id" '{}')")" = 41001 ] || fail "list_id without token"
[ "$(status l GET "/cgi-bin/user/list_id?access_token=$TL")" = 405 ] || fail "list_id by GET"
expect "$(get l /sim/stats)" '.total.by_path["user/list_id"] >= 5 and .total.by_path["department/simplelist"] >= 17 and
    .total.by_path["department/get"] >= 20 and .total.faults.busy == 1' "by_path of the new APIs"
stop_sim l
ok "user/list_id pages (limits 1..10000, across mutations, 40058), department/simplelist, department/get"

# ---------------------------------------------------------------- per-IP limits
start_sim i --rate 100000 --ip-per-min 30 --departments 3 --users-per-dept 1
expect "$(get i /sim/limits)" '.ip_per_min == 30 and .ip_per_hour == 600000' "per-IP limits"
TI=$(get_from 127.0.0.2 i "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001" | jq -r .access_token)
URLS=()
for _ in $(seq 1 40); do URLS+=("http://127.0.0.1:${PORT[i]}/cgi-bin/user/list?access_token=$TI&department_id=2"); done
curl -sS --max-time 10 "${URLS[@]}" | jq -c . >"$WORK/ip40.json"
GOT=$(jq -s -c '[.[].errcode] | group_by(.) | map({(.[0]|tostring): length}) | add' "$WORK/ip40.json")
[ "$GOT" = '{"0":30,"45009":10}' ] || fail "40 from one address with ip_per_min 30: $GOT"
jq -s -c '[.[].errcode]' "$WORK/ip40.json" | grep -q '^\[0\(,0\)\{29\}\(,45009\)\{10\}\]$' || fail "not the last 10 refused"
refused "$(tail -1 "$WORK/ip40.json")" 45009 "api freq out of limit (more than ip_per_min=30 calls from one ip in 60 s)" 127.0.0.1
# Another address is not affected; /sim/* and /healthz are not counted.
[ "$(status i GET /healthz)" = 200 ] || fail "/healthz"
[ "$(errcode "$(get_from 127.0.0.2 i "/cgi-bin/user/list?access_token=$TI&department_id=2")")" = 0 ] ||
    fail "127.0.0.2 refused for 127.0.0.1's calls"
S=$(get i /sim/stats)
expect "$S" '(.ips[] | select(.ip == "127.0.0.1") | .requests == 40 and .ip_violations == 10 and .max_60s == 40 and
    .max_3600s == 40 and .by_path["user/list"] == 40 and .errcodes["45009"] == 10) and
    (.ips[] | select(.ip == "127.0.0.2") | .requests == 2 and .ip_violations == 0 and .by_path.gettoken == 1) and
    .total.ip_violations == 10 and .total.violations == 0 and .corps[0].ip_violations == 10' "per-IP stats"
expect "$S" '(.corps[0].by_ip | map({(.ip): .requests}) | add) == {"127.0.0.2":2,"127.0.0.1":40} and
    (.corps[0].by_ip[] | select(.ip == "127.0.0.1") | .max_1s == 40)' "by_ip"
# reset-stats zeroes the evidence, not the window that enforces the limit.
post i /sim/reset-stats '' >/dev/null
[ "$(errcode "$(get i "/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001")")" = 45009 ] ||
    fail "gettoken counts toward the per-IP limit; reset-stats must not reset the window"
expect "$(get i /sim/stats)" '(.ips[] | select(.ip == "127.0.0.1") | .requests == 1 and .ip_violations == 1 and
    .max_60s == 1) and (.ips[] | select(.ip == "127.0.0.2") | .requests == 0)' "reset-stats zeroes ips"
expect "$(post i /sim/limits '{"ip_per_min":1000,"ip_per_hour":45}')" '.ip_per_min == 1000 and .ip_per_hour == 45' \
    "/sim/limits ip_per_*"
# 41 arrivals so far from 127.0.0.1 this hour (refused ones count): 4 more, then 45009 by the hour.
GOT=$(for _ in 1 2 3 4 5; do get i "/cgi-bin/user/list?access_token=$TI&department_id=1" | jq -c .errcode; done | tr '\n' ' ')
[ "$GOT" = "0 0 0 0 45009 " ] || fail "ip_per_hour 45 after 41: $GOT"
refused "$(get i "/cgi-bin/user/list?access_token=$TI&department_id=1")" 45009 \
    "api freq out of limit (more than ip_per_hour=45 calls from one ip in 3600 s)" 127.0.0.1
[ "$(status i POST /sim/limits '{"ip_per_min":0}')" = 400 ] || fail "ip_per_min 0 accepted"
stop_sim i
ok "per-IP limits: 45009 past ip_per_min / ip_per_hour from one address only; ips[] stats; reset-stats"

# ---------------------------------------------------------------- shutdown with work pending
post m /sim/faults '{"hang_next":1}' >/dev/null
curl -s --max-time 5 "http://127.0.0.1:${PORT[m]}/cgi-bin/user/list?access_token=$TOK&department_id=1" \
    >/dev/null 2>&1 &
BGPIDS+=($!)
post m /sim/faults '{"latency_ms":3000}' >/dev/null
curl -s --max-time 5 "http://127.0.0.1:${PORT[m]}/cgi-bin/user/list?access_token=$TOK&department_id=1" \
    >/dev/null 2>&1 &
BGPIDS+=($!)
sleep 0.3
START=$(date +%s%N)
stop_sim m
ELAPSED_MS=$((($(date +%s%N) - START) / 1000000))
[ "$ELAPSED_MS" -lt 2000 ] || fail "SIGTERM with a pending answer took ${ELAPSED_MS} ms"
wait "${BGPIDS[@]}" 2>/dev/null || true
BGPIDS=()
ok "SIGTERM with a hung request and a delayed answer: exit 0 in ${ELAPSED_MS} ms, no leaks"

echo "all simulator checks passed"
