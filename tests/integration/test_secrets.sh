#!/usr/bin/env bash
# Secrets from files and credentials, end to end, and the read token.
#
# A PostgreSQL of this test's own that asks for a password (scram-sha-256) and a
# Redis that asks for one (requirepass), so a password that does not arrive
# fails. Then:
#   - `orgsync migrate` with ORGSYNC_PG_PASSWORD_FILE, with libpq's passfile=,
#     and with the password in the DSN; a wrong password file fails;
#   - `orgsync enterprise add` reads the app secret from VAR_FILE and the
#     contact secret from $CREDENTIALS_DIRECTORY/VAR;
#   - `orgsync serve` with every secret from $CREDENTIALS_DIRECTORY (host c) or
#     from *_FILE (host f): ready on both servers, a requested run succeeds
#     against the simulator (which checks the corp secret);
#   - directory reads: 401 with WWW-Authenticate without or with a wrong token,
#     200 with the read or the admin token; progress, health, metrics and the
#     page stay open; ORGSYNC_PUBLIC_READS=on (host p) opens them; with no token
#     at all (host n) they are refused with a message saying what to set;
#   - the negative-cache key is HMAC-SHA256(key, mobile), not sha256(mobile):
#     the environment's key in Redis (c) or ORGSYNC_CACHE_KEY (f);
#   - configuration errors exit 2 naming the setting and the path;
#   - no secret appears in any log line, error or /v1 answer.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

SV_ENV="secrets$$"
PW_PG='pg-pass word:@/%q1'
PW_REDIS='redis-p@ss/w:rd%1'
ADMIN=admin-token-from-credential-0123
READ=read-token-from-credential-4567
CACHE_KEY=cache-key-from-a-file-89abcdef
HOOK=http://127.0.0.1:9/hook/WEBHOOKSECRET0123
CORP_SECRET=secret-wwsim0001
CONTACT_SECRET=contact-wwsim0001

# ---- servers that ask for passwords ----
PGD="$SV_DIR/pg"
eval "$("$ORGSYNC_SRC/tests/servers.sh" start-pg "$PGD")"
PRIV_PG_DSN=$PG_DSN
REDIS_P=$(free_port)
stop_private() {
    redis-cli -p "$REDIS_P" --no-auth-warning -a "$PW_REDIS" shutdown nosave >/dev/null 2>&1 || true
    "$ORGSYNC_SRC/tests/servers.sh" stop-pg "$PGD" >/dev/null 2>&1 || true
}
SV_CLEANUP_HOOK=stop_private
redis-server --port "$REDIS_P" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --requirepass "$PW_REDIS" --pidfile "$SV_DIR/redis.pid" --dir "$SV_DIR" \
    --logfile "$SV_DIR/redis-server.txt" >/dev/null
T=5 wait_for redis-cli -p "$REDIS_P" --no-auth-warning -a "$PW_REDIS" ping
rc2() { redis-cli -p "$REDIS_P" --no-auth-warning -a "$PW_REDIS" --raw "$@"; }
check "the private Redis refuses a client without the password" \
    grep -q NOAUTH <<<"$(redis-cli -p "$REDIS_P" --raw get x 2>&1)"

# Only the role secrets_app needs a password (scram); the superuser stays trusted.
sed -i '1i host all secrets_app 127.0.0.1/32 scram-sha-256' "$PGD/pgdata/pg_hba.conf"
psql -qAtX -v ON_ERROR_STOP=1 "$PRIV_PG_DSN" >/dev/null <<SQL
SELECT pg_reload_conf();
CREATE ROLE secrets_app LOGIN PASSWORD '${PW_PG//\'/\'\'}';
CREATE DATABASE secdb OWNER secrets_app;
SQL
SDB="host=127.0.0.1 port=$PG_PORT user=secrets_app dbname=secdb"
# The test's own queries go in as the (trusted) superuser. Never PGPASSWORD: the
# orgsync processes would inherit it and pass without reading any file.
psql_q() { psql -qAtX "$PRIV_PG_DSN dbname=secdb" -c "$1"; }
SV_REDIS_URL="redis://127.0.0.1:$REDIS_P/0"

# ---- the secrets, as files and as credentials ----
FILES="$SV_DIR/files"
CREDS="$SV_DIR/credentials"
mkdir -m 700 "$FILES" "$CREDS"
printf '%s\n' "$PW_PG" >"$FILES/pg"
printf '%s\r\n' "$PW_REDIS" >"$FILES/redis"
printf '%s\n' "$ADMIN" >"$FILES/admin"
printf '%s\n' "$READ" >"$FILES/read"
printf '%s\n' "$CACHE_KEY" >"$FILES/cache"
printf '%s\n' "$HOOK" >"$FILES/hook"
printf '%s\n' "$CORP_SECRET" >"$FILES/corp"
printf 'wrong-password\n' >"$FILES/wrong"
printf '%s' "$PW_PG" >"$CREDS/ORGSYNC_PG_PASSWORD"
printf '%s\n' "$PW_REDIS" >"$CREDS/ORGSYNC_REDIS_PASSWORD"
printf '%s\n' "$ADMIN" >"$CREDS/ORGSYNC_ADMIN_TOKEN"
printf '%s\n' "$READ" >"$CREDS/ORGSYNC_READ_TOKEN"
printf '%s\n' "$CONTACT_SECRET" >"$CREDS/CORP1_CONTACT"
chmod 400 "$FILES"/* "$CREDS"/*
# libpq's own password file (it must be 0600 or less)
printf '127.0.0.1:%s:secdb:secrets_app:%s\n' "$PG_PORT" \
    "$(sed 's/[\\:]/\\&/g' <<<"$PW_PG")" >"$FILES/pgpass"
chmod 600 "$FILES/pgpass"

osync() { env -u CREDENTIALS_DIRECTORY "$ORGSYNC_BIN" "$@"; }

# ---- one-shot commands ----
out=$(ORGSYNC_PG_DSN="$SDB" ORGSYNC_PG_PASSWORD_FILE="$FILES/wrong" osync migrate 2>&1) && rc=0 || rc=$?
eq "migrate with a wrong password file fails" 1 "$rc"
check "  the server refused the password" grep -q 'password authentication failed' <<<"$out"
out=$(ORGSYNC_PG_DSN="$SDB" osync migrate 2>&1) && rc=0 || rc=$?
eq "migrate without any password fails" 1 "$rc"
out=$(ORGSYNC_PG_DSN="$SDB" ORGSYNC_PG_PASSWORD_FILE="$FILES/pg" osync migrate 2>&1) && rc=0 || rc=$?
eq "migrate with ORGSYNC_PG_PASSWORD_FILE" 0 "$rc"
check "  the schema is there" test "$(psql_q 'SELECT max(version) FROM schema_migrations')" -ge 5
out=$(ORGSYNC_PG_DSN="$SDB passfile=$FILES/pgpass" osync migrate 2>&1) && rc=0 || rc=$?
eq "migrate with libpq's passfile=" 0 "$rc"
out=$(ORGSYNC_PG_DSN="$SDB password='${PW_PG//\'/\\\'}'" osync migrate 2>&1) && rc=0 || rc=$?
eq "migrate with the password in the DSN (an unset ORGSYNC_PG_PASSWORD overrides nothing)" 0 "$rc"
out=$(CREDENTIALS_DIRECTORY="$CREDS" ORGSYNC_PG_DSN="$SDB" "$ORGSYNC_BIN" migrate 2>&1) && rc=0 || rc=$?
eq "migrate with the password as a credential" 0 "$rc"

# Corp secrets: the app secret from CORP1_FILE, the contact secret as a credential.
out=$(CREDENTIALS_DIRECTORY="$CREDS" CORP1_FILE="$FILES/corp" ORGSYNC_PG_DSN="$SDB" \
    "$ORGSYNC_BIN" enterprise add --corp-id wwsim0001 \
    --name one --secret-env CORP1 --contact-secret-env CORP1_CONTACT 2>&1) && rc=0 || rc=$?
eq "enterprise add with the secrets from a file and a credential" "0 added enterprise wwsim0001" "$rc $out"
eq "  both stored exactly (no line break)" "$CORP_SECRET|$CONTACT_SECRET" \
    "$(psql_q "SELECT corp_secret || '|' || contact_secret FROM enterprises")"
out=$(CORP1="$CORP_SECRET" CORP1_FILE="$FILES/corp" ORGSYNC_PG_DSN="$SDB" \
    ORGSYNC_PG_PASSWORD_FILE="$FILES/pg" osync enterprise set --corp-id wwsim0001 --secret-env CORP1 2>&1) &&
    rc=0 || rc=$?
eq "enterprise set with CORP1 and CORP1_FILE both set: usage error" 2 "$rc"
check "  naming both, not the secret" grep -q 'both CORP1 and CORP1_FILE are set' <<<"$out"
check "  (secret not shown)" test -z "$(grep -F "$CORP_SECRET" <<<"$out")"
out=$(CORP2_FILE="$FILES/none" ORGSYNC_PG_DSN="$SDB" osync enterprise set --corp-id wwsim0001 \
    --secret-env CORP2 2>&1) && rc=0 || rc=$?
eq "an unreadable CORP2_FILE: usage error" 2 "$rc"
check "  naming the variable and the path" grep -q "CORP2_FILE: cannot read $FILES/none" <<<"$out"

# Configuration errors: exit 2 before connecting, naming the setting and the path.
cfg_err() { # expected-substring env...
    local want=$1 o r
    shift
    o=$(env -u CREDENTIALS_DIRECTORY "$@" timeout 10 "$ORGSYNC_BIN" serve 2>&1) && r=0 || r=$?
    eq "serve with $(printf '%s ' "$@" | sed "s#$SV_DIR#DIR#g"): exit 2" 2 "$r"
    check "  says '$want'" grep -qF "$want" <<<"$o"
    for s in "$ADMIN" "$READ" "$PW_PG" "$PW_REDIS"; do
        if grep -qF "$s" <<<"$o"; then not_ok "  a secret is in the message: $o"; fi
    done
}
cfg_err "ORGSYNC_ADMIN_TOKEN_FILE: cannot read $FILES/missing: No such file or directory" \
    ORGSYNC_ADMIN_TOKEN_FILE="$FILES/missing"
cfg_err "ORGSYNC_ADMIN_TOKEN: both ORGSYNC_ADMIN_TOKEN and ORGSYNC_ADMIN_TOKEN_FILE are set" \
    ORGSYNC_ADMIN_TOKEN="$ADMIN" ORGSYNC_ADMIN_TOKEN_FILE="$FILES/admin"
cfg_err "ORGSYNC_READ_TOKEN: set by ORGSYNC_READ_TOKEN and by the credential $CREDS/ORGSYNC_READ_TOKEN" \
    CREDENTIALS_DIRECTORY="$CREDS" ORGSYNC_READ_TOKEN="$READ"
: >"$SV_DIR/empty"
cfg_err "ORGSYNC_REDIS_PASSWORD_FILE: $SV_DIR/empty is empty" ORGSYNC_REDIS_PASSWORD_FILE="$SV_DIR/empty"
cfg_err "ORGSYNC_READ_TOKEN: must differ from ORGSYNC_ADMIN_TOKEN" \
    ORGSYNC_ADMIN_TOKEN_FILE="$FILES/admin" ORGSYNC_READ_TOKEN_FILE="$FILES/admin"

# The shipped environment files load as they are (settings and the files they
# name: prod.env's sslrootcert must be readable; without it libpq would look in
# a home directory that the unit's ProtectHome=yes hides).
for f in "$ORGSYNC_SRC"/deploy/env/*.env; do
    out=$(env -u CREDENTIALS_DIRECTORY "$ORGSYNC_BIN" --config "$f" version 2>&1) && rc=0 || rc=$?
    eq "deploy/env/$(basename "$f") loads as shipped" 0 "$rc"
    [ "$rc" = 0 ] || echo "$out"
done

# ---- serve with file-based secrets only ----
serve_sim 4 --enterprises 1 --departments 3 --users-per-dept 3
# c: everything from $CREDENTIALS_DIRECTORY; nothing secret in the environment.
serve_start c 0 ORGSYNC_ADMIN_TOKEN= CREDENTIALS_DIRECTORY="$CREDS"
# f: everything from *_FILE, its own cache key and a webhook; never leads.
serve_start f 1 ORGSYNC_ADMIN_TOKEN= ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 \
    ORGSYNC_PG_PASSWORD_FILE="$FILES/pg" ORGSYNC_REDIS_PASSWORD_FILE="$FILES/redis" \
    ORGSYNC_ADMIN_TOKEN_FILE="$FILES/admin" ORGSYNC_READ_TOKEN_FILE="$FILES/read" \
    ORGSYNC_CACHE_KEY_FILE="$FILES/cache" ORGSYNC_ALERT_WEBHOOK_FILE="$FILES/hook"
# p: public reads; n: no token at all (reads refused). Passwords from files.
serve_start p 2 ORGSYNC_ADMIN_TOKEN= ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 ORGSYNC_PUBLIC_READS=on \
    ORGSYNC_PG_PASSWORD_FILE="$FILES/pg" ORGSYNC_REDIS_PASSWORD_FILE="$FILES/redis" \
    ORGSYNC_ADMIN_TOKEN_FILE="$FILES/admin"
serve_start n 3 ORGSYNC_ADMIN_TOKEN= ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 \
    ORGSYNC_PG_PASSWORD_FILE="$FILES/pg" ORGSYNC_REDIS_PASSWORD_FILE="$FILES/redis"
serve_wait_ready c f p n
C="http://127.0.0.1:${SV_HTTP[c]}"
F="http://127.0.0.1:${SV_HTTP[f]}"
P="http://127.0.0.1:${SV_HTTP[p]}"
N="http://127.0.0.1:${SV_HTTP[n]}"
redis_ok() { curl -fsS "$1/readyz" | jq -e '.postgres == "ok" and .redis == "ok"' >/dev/null; }
for h in "$C" "$F" "$P" "$N"; do
    T=15 wait_for redis_ok "$h" || not_ok "$h not ready on both servers: $(curl -sS "$h/readyz")"
done
ok "every host is ready on the password-protected PostgreSQL and Redis"

run=$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN" "$F/v1/runs" | jq -r .run_id)
check "POST /v1/runs with the admin token from a file" test "${run:-0}" -gt 0
T=30 wait_for run_is "$run" succeeded
eq "the run (led by c, corp secret from a file) succeeded" succeeded "$(run_state "$run")"

st() { # URL [curl args...] -> status; body in $SV_DIR/st.body, headers in st.head
    local u=$1
    shift
    curl -sS -o "$SV_DIR/st.body" -D "$SV_DIR/st.head" -w '%{http_code}' "$@" "$u"
}
READS=("/v1/enterprises/wwsim0001/users" "/v1/enterprises/wwsim0001/departments"
    "/v1/users?mobile=13800000000")
for path in "${READS[@]}"; do
    for h in "$C" "$F"; do
        eq "GET $path on ${h##*:} without a token: 401" 401 "$(st "$h$path")"
        check "  WWW-Authenticate: Bearer" grep -qi '^www-authenticate: Bearer' "$SV_DIR/st.head"
        eq "  the API's error shape" unauthorized "$(jq -r .error.code "$SV_DIR/st.body")"
        eq "  a wrong token: 401" 401 "$(st "$h$path" -H "Authorization: Bearer ${READ}x")"
        check "  invalid_token" grep -qi 'error="invalid_token"' "$SV_DIR/st.head"
        eq "  the read token: 200" 200 "$(st "$h$path" -H "Authorization: Bearer $READ")"
        eq "  the admin token: 200" 200 "$(st "$h$path" -H "Authorization: Bearer $ADMIN")"
    done
    eq "GET $path with ORGSYNC_PUBLIC_READS=on, no token: 200" 200 "$(st "$P$path")"
    eq "GET $path with no token configured: 401" 401 "$(st "$N$path" -H "Authorization: Bearer $READ")"
    check "  the message says what to set" grep -q 'ORGSYNC_READ_TOKEN (or ORGSYNC_PUBLIC_READS=on' "$SV_DIR/st.body"
done
eq "the members are served (9)" 9 \
    "$(curl -fsS -H "Authorization: Bearer $READ" "$C/v1/enterprises/wwsim0001/users" | jq -r .total)"
for path in / /healthz /readyz /metrics /v1/runs/latest /v1/runs /v1/leader /v1/candidates \
    /v1/enterprises/wwsim0001/progress; do
    eq "GET $path stays open" "200 200" "$(st "$C$path") $(st "$N$path")"
done
check "n warned at start that reads are refused" grep -q 'directory reads (members, departments) answer 401' "$SV_DIR/n.log"

# ---- the negative cache key: HMAC, not a plain hash ----
lookup() { # HOST MOBILE -> status
    st "$1/v1/users/realtime-lookup" -X POST -H "Authorization: Bearer $ADMIN" \
        -d "{\"corp_id\":\"wwsim0001\",\"mobile\":\"$2\"}"
}
hmac() { python3 -c 'import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$1" "$2"; }
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
calls() { sim_stat '.total.by_path["user/getuserid"] // 0'; }
c0=$(calls)
eq "unknown mobile through c: 404" 404 "$(lookup "$C" 17700000001)"
eq "  one upstream getuserid" $((c0 + 1)) "$(calls)"
env_key=$(rc2 GET "orgsync:$SV_ENV:cache_key")
check "the environment's key is 64 hex digits in Redis" grep -Eq '^[0-9a-f]{64}$' <<<"$env_key"
eq "the entry is HMAC-SHA256(environment key, mobile)" 1 \
    "$(rc2 EXISTS "orgsync:$SV_ENV:neg:wwsim0001:$(hmac "$env_key" 17700000001)")"
eq "no entry under sha256(mobile)" 0 "$(rc2 EXISTS "orgsync:$SV_ENV:neg:wwsim0001:$(sha 17700000001)")"
check "the key is not sha256(mobile)" test "$(hmac "$env_key" 17700000001)" != "$(sha 17700000001)"
eq "c's workers and p share the key: cached 404s" "404 404 404" \
    "$(lookup "$C" 17700000001) $(lookup "$C" 17700000001) $(lookup "$P" 17700000001)"
eq "  and no new upstream call" $((c0 + 1)) "$(calls)"
eq "unknown mobile through f (ORGSYNC_CACHE_KEY from a file): 404" 404 "$(lookup "$F" 17700000002)"
eq "f's entry is HMAC-SHA256(ORGSYNC_CACHE_KEY, mobile)" 1 \
    "$(rc2 EXISTS "orgsync:$SV_ENV:neg:wwsim0001:$(hmac "$CACHE_KEY" 17700000002)")"
eq "only those two negative entries" 2 "$(rc2 KEYS "orgsync:$SV_ENV:neg:*" | wc -l)"

# ---- no secret anywhere it should not be ----
for path in /v1/leader /v1/candidates /metrics /v1/runs/latest /v1/runs /readyz; do
    curl -fsS "$C$path"
    curl -fsS "$F$path"
done >"$SV_DIR/answers.txt"
leaks=""
for s in "$ADMIN" "$READ" "$PW_PG" "$PW_REDIS" "$CACHE_KEY" WEBHOOKSECRET0123 "$CORP_SECRET" \
    "$CONTACT_SECRET" "$env_key" redis-p%40ss; do
    grep -lF -- "$s" "$SV_DIR"/*.log "$SV_DIR/answers.txt" >/dev/null 2>&1 && leaks="$leaks [$s]"
done
eq "no secret in any log line or /v1 answer" "" "$leaks"
check "the logs say how reads are guarded" grep -q '"directory_reads":"read or admin token"' "$SV_DIR/c.log"
check "no sanitizer report in any log" serve_logs_clean
finish
