#!/usr/bin/env bash
# GET /: the progress page, opened in headless Chromium during a run. Two DOM
# reads a few seconds apart show the bars advance, the leader and the state.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

CHROMIUM=$(command -v chromium || true)
[ -n "$CHROMIUM" ] || { not_ok "chromium is not installed (tests/lib/deps.sh installs it)"; finish; exit 1; }

SV_ENV="page$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
# 120 departments at 10 a second: a run of 12 s or more, so that the first read
# (Chromium's start-up took up to 10 s on a loaded CI machine) sees it going on.
serve_sim 1 --enterprises 2 --departments 120 --users-per-dept 2 --seed 3
serve_corps "$SDB" 2
# 4 requests a second per enterprise: the run lasts about 10 s, long enough to watch.
serve_start a 0 ORGSYNC_WORKERS=1 ORGSYNC_DEPT_RATE=4
# a second host, so that the page lists two candidates and the leadership can move
serve_start b 0 ORGSYNC_WORKERS=1 ORGSYNC_DEPT_RATE=4
serve_wait_ready a b
URL="http://127.0.0.1:${SV_HTTP[a]}/"

headers=$(curl -fsS -D - -o "$SV_DIR/page.html" "$URL")
check "GET / is HTML" grep -qi '^content-type: text/html' <<<"$headers"
check "the page fetches nothing from outside (CSP)" grep -qi "^content-security-policy: default-src 'none'" <<<"$headers"
check "the page polls /v1/runs/latest" grep -q 'v1/runs/latest' "$SV_DIR/page.html"

rid=$(serve_request_run a)
T=10 wait_for bash -c "[ \"\$(psql -qAtX '$SDB' -c 'SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid')\" -gt 0 ]" ||
    not_ok "run $rid made no progress"

# Dumps the page's DOM after its script has polled the API (virtual time lets
# the page run for 3 s of its own clock; Chromium waits for the fetches).
dom() {
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$SV_DIR/chromium.$1" --virtual-time-budget=3000 --dump-dom "$URL" \
        2>"$SV_DIR/chromium.$1.err"
}
# Sum of the per-enterprise bars' percents in a DOM dump.
bars() { grep -o 'data-percent="[0-9.]*"' | sed 's/[^0-9.]//g' | awk '{s += $1; n++} END {printf "%d %.1f\n", n, s}'; }

dom 1 >"$SV_DIR/dom1.html"
sleep 3
dom 2 >"$SV_DIR/dom2.html"
read -r n1 s1 < <(bars <"$SV_DIR/dom1.html")
read -r n2 s2 < <(bars <"$SV_DIR/dom2.html")
echo "first read: $n1 bars, percents summing to $s1; second: $n2 bars, $s2"
eq "one bar per enterprise (first read)" 2 "$n1"
eq "one bar per enterprise (second read)" 2 "$n2"
check "the bars advanced between the two reads ($s1 -> $s2)" awk -v a="$s1" -v b="$s2" 'BEGIN { exit !(b > a) }'
check "the page names the run" grep -q "<b id=\"run\">$rid</b>" "$SV_DIR/dom2.html"
# The leader is named while the run goes on (the first read: the bars advanced after
# it); once the run is over, the lock may already be free and the page say "nobody".
# Either host may win the lock: the page must name the one sync_runs records.
lead1=$(psql_q "SELECT leader_instance FROM sync_runs WHERE run_id = $rid")
check "the page names the leader ($lead1)" grep -Eq "<b id=\"leader\">$lead1(/w1)? \(token [0-9]+\)</b>" "$SV_DIR/dom1.html"
check "the page shows the run's state" grep -Eq '<b id="state" class="state (running|succeeded)">' "$SV_DIR/dom2.html"
check "the page shows each enterprise" grep -q 'data-corp="wwsim0002"' "$SV_DIR/dom2.html"

# Names, history and hosts (fetched every 3 s of the page's clock, the first at once).
check "the page names each enterprise (enterprises.name)" grep -q '<td>c2<span class="corp">wwsim0002</span></td>' "$SV_DIR/dom2.html"
check "the history has a row for the run" grep -q "<tr data-run=\"$rid\">" "$SV_DIR/dom2.html"
check "the chart has a bar for the run" grep -q "<g data-run=\"$rid\">" "$SV_DIR/dom2.html"
check "the history names the run's leader" grep -Eq "<tr data-run=\"$rid\">.*</span>[ab](/w1)?</td>" "$SV_DIR/dom2.html"
check "the hosts table lists host a" grep -Eq '<tr data-instance="a(/w1)?">' "$SV_DIR/dom2.html"
check "the hosts table lists host b" grep -Eq '<tr data-instance="b(/w1)?">' "$SV_DIR/dom2.html"
check "the page says whether the answering worker competes" grep -Eq '<b id="self">a(/w1)?</b>: <span id="self-why">(leads now|competes for the lock)</span>' "$SV_DIR/dom2.html"

T=60 wait_for run_is "$rid" succeeded || not_ok "run $rid did not finish"
dom 3 >"$SV_DIR/dom3.html"
read -r _ s3 < <(bars <"$SV_DIR/dom3.html")
eq "both bars full once the run succeeded" 200.0 "$s3"

# A second run, for the rotation; the screenshot is taken while it goes on.
sleep 2
rid2=$(serve_request_run a)
T=15 wait_for bash -c "[ \"\$(psql -qAtX '$SDB' -c 'SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid2')\" -gt 30 ]" ||
    not_ok "run $rid2 made no progress"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$SV_DIR/chromium.shot" --virtual-time-budget=3000 --window-size=1200,900 \
    --screenshot="$SV_DIR/page.png" "$URL" 2>"$SV_DIR/chromium.shot.err"
check "a screenshot of the page" test -s "$SV_DIR/page.png"
# ORGSYNC_PAGE_SCREENSHOT=docs/page.png keeps it (the one in docs/ was taken so)
if [ -n "${ORGSYNC_PAGE_SCREENSHOT:-}" ] && [ -s "$SV_DIR/page.png" ]; then cp "$SV_DIR/page.png" "$ORGSYNC_PAGE_SCREENSHOT"; fi
dom 4 >"$SV_DIR/dom4.html"
check "the history lists both runs" grep -q "<tr data-run=\"$rid2\">.*<tr data-run=\"$rid\">" "$SV_DIR/dom4.html"
echo "leaders: run $rid $(psql_q "SELECT leader_instance FROM sync_runs WHERE run_id = $rid"), run $rid2 $(psql_q "SELECT leader_instance FROM sync_runs WHERE run_id = $rid2")"
T=60 wait_for run_is "$rid2" succeeded || not_ok "run $rid2 did not finish"
finish
