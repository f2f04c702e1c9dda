#!/usr/bin/env bash
# Progress never goes backwards behind a load balancer (issue 19, item 3). Three
# `orgsync serve` hosts with two workers each (six per-worker caches, each
# answer up to 250 ms old) are polled round-robin through a whole run, one poll
# at a time on a new connection, the way a load balancer spreads one client's
# polls. The client sends ?min_revision= with the highest revision it has seen
# (docs/API.md "Caching"): every answer's revision must be at least that, and
# between consecutive answers no enterprise's percent, departments_done or
# users_upserted, nor the run's percent, may go down.
#
# A second client polls the same way without min_revision; its backward steps
# are printed, not judged: a client that does not say what it has seen can
# still be given an older answer by another instance (docs/API.md).
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

SV_ENV="mono$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
# 3 enterprises of 40 departments, 10 departments a second each (and 5-25 ms per
# upstream answer): a run of 4 s or more, each enterprise's progress written
# about every 100 ms, so that six caches of 250 ms disagree all the time.
serve_sim 3 --enterprises 3 --departments 40 --users-per-dept 2 --seed 19 --latency-ms 5 --jitter-ms 20
serve_corps "$SDB" 3
i=0
for h in a b c; do
    serve_start "$h" "$i" ORGSYNC_DEPT_RATE=10
    i=$((i + 1))
done
serve_wait_ready a b c

rid=$(serve_request_run b)
check "a run was requested ($rid)" test "$rid" -gt 0

# The poller: prints one line of counts per client, then the first backward
# steps it saw. Exits when the run has been seen finished by every host in turn
# (or after 120 s).
python3 - "$rid" "${SV_HTTP[a]}" "${SV_HTTP[b]}" "${SV_HTTP[c]}" >"$SV_DIR/poll.out" 2>"$SV_DIR/poll.err" <<'PY' || true
import http.client, json, sys, time

rid, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
FINISHED = ("succeeded", "partial", "failed")

class Client:
    def __init__(self, name, send_min):
        self.name, self.send_min = name, send_min
        self.max_rev = 0
        self.prev = {}          # path -> {key: value} of the previous answer
        self.answers = self.backward = self.backward_answers = 0
        self.below_min = self.no_revision = self.errors = 0
        self.steps = []
        self.percents = set()   # run percents seen while running
        self.finished_seen = 0
        self.state = None

    def poll(self, port, path):
        url = path
        if self.send_min:
            url += "?min_revision=%d" % self.max_rev
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", url)
            r = c.getresponse()
            body = r.read()
        finally:
            c.close()
        if r.status != 200:
            self.errors += 1
            return
        o = json.loads(body)
        self.answers += 1
        rev = o.get("revision")
        if not isinstance(rev, int):
            self.no_revision += 1
        else:
            if self.send_min and rev < self.max_rev:
                self.below_min += 1
            self.max_rev = max(self.max_rev, rev)
        vals = {}
        if "enterprises" in o:                      # a run
            self.state = o["state"]
            vals["run percent"] = o["percent"]
            if o["state"] == "running":
                self.percents.add(o["percent"])
            if o["state"] in FINISHED:
                self.finished_seen += 1
            ents = o["enterprises"]
        else:                                       # one enterprise's progress
            ents = [o["enterprise"]]
        for e in ents:
            for k in ("percent", "departments_done", "users_upserted"):
                vals["%s %s" % (e["corp_id"], k)] = e[k]
        prev = self.prev.get(path, {})
        back = 0
        for k, v in vals.items():
            if k in prev and v < prev[k]:
                back += 1
                if len(self.steps) < 8:
                    self.steps.append("%s %s (port %d): %s -> %s" % (path, k, port, prev[k], v))
        self.backward += back
        self.backward_answers += back > 0
        self.prev[path] = vals

clients = [Client("with_min_revision", True), Client("without_min_revision", False)]
paths = ["/v1/runs/" + rid, "/v1/enterprises/wwsim0002/progress"]
end, i = time.time() + 120, 0
while time.time() < end:
    port = ports[i % len(ports)]
    for cl in clients:
        try:
            cl.poll(port, paths[(i // len(ports)) % len(paths)])
        except Exception as ex:             # a refused or cut connection counts
            cl.errors += 1
            print("poll error: %r" % ex, file=sys.stderr)
    i += 1
    if all(cl.finished_seen >= 2 * len(ports) for cl in clients):
        break
for cl in clients:
    print("%s answers=%d backward=%d backward_answers=%d below_min=%d no_revision=%d errors=%d "
          "running_percents=%d max_revision=%d state=%s"
          % (cl.name, cl.answers, cl.backward, cl.backward_answers, cl.below_min, cl.no_revision,
             cl.errors, len(cl.percents), cl.max_rev, cl.state))
for cl in clients:
    for s in cl.steps:
        print("%s step: %s" % (cl.name, s))
PY
cat "$SV_DIR/poll.out"
tail -5 "$SV_DIR/poll.err"
line=$(grep '^with_min_revision answers=' "$SV_DIR/poll.out" || true)
get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
check "the poller saw the run through ($line)" test -n "$line"
eq "the run succeeded" succeeded "$(get state)"
check "answers through the run ($(get answers))" test "$(get answers)" -ge 100
check "the run was watched moving: distinct percents while running ($(get running_percents))" \
    test "$(get running_percents)" -ge 5
eq "every poll answered 200" 0 "$(get errors)"
eq "every answer has a revision" 0 "$(get no_revision)"
eq "no answer below the min_revision asked for" 0 "$(get below_min)"
eq "backward steps of percent, departments_done, users_upserted (with min_revision)" 0 "$(get backward)"
check "data equal to the simulator's" serve_data_equals_sim "$SDB"
check "no sanitizer report in any log" serve_logs_clean
finish
