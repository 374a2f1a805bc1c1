#!/usr/bin/env bash
# Private, loopback-only PostgreSQL cluster for the trio_sendmail outbox tests.
#
#   tests/interop/postgres.sh start    install PostgreSQL if needed, initdb once, start, wait
#   tests/interop/postgres.sh stop     stop the cluster this script started (idempotent)
#   tests/interop/postgres.sh status   exit 0 if running, 3 if not
#   tests/interop/postgres.sh env      print `export KEY=VALUE` lines for the tests
#   tests/interop/postgres.sh purge    stop and delete the whole state folder
#
# Everything (data folder, socket, log, env files) lives in $POSTGRES_STATE
# (default ${TMPDIR:-/tmp}/trio_sendmail_postgres). The system cluster is never
# configured, started or stopped: this script starts `pg_ctl -D $STATE/data` as
# the postgres user, listening on 127.0.0.1:$POSTGRES_PORT (default 15432) and on
# a Unix socket in the state folder, and `stop` stops only that data folder.
# Trust authentication is limited to loopback (a throw-away test cluster).

set -euo pipefail

STATE=${POSTGRES_STATE:-${TMPDIR:-/tmp}/trio_sendmail_postgres}
STATE=${STATE%/}
saved_port() {
    [[ -f $STATE/env.sh ]] || return 0
    sed -n "s/^export POSTGRES_PORT='\([0-9]*\)'\$/\1/p" "$STATE/env.sh"
}
PORT=${POSTGRES_PORT:-$(saved_port)}
PORT=${PORT:-15432}
if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    echo "postgres.sh: bad port number: $PORT" >&2
    exit 2
fi
START_TIMEOUT=${POSTGRES_START_TIMEOUT:-60}
HOST=127.0.0.1
DATABASE=trio_sendmail
USER_NAME=postgres
DATA=$STATE/data
SOCKDIR=$STATE/run
LOGFILE=$STATE/postgres.log
ENV_SH=$STATE/env.sh
ENV_JSON=$STATE/env.json
PACKAGES=(postgresql)

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    printf '\npostgres.sh: ERROR: %s\n' "$*" >&2
    [[ -f $LOGFILE ]] && tail -n 30 "$LOGFILE" >&2
    exit 1
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/pg_ctl ]] && { echo "$dir"; return 0; }
    done
    return 1
}

ensure_installed() {
    if bindir >/dev/null && id postgres >/dev/null 2>&1; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "PostgreSQL missing and not root: cannot apt-get install"
    say "installing: ${PACKAGES[*]}"
    local log=${TMPDIR:-/tmp}/trio_sendmail_postgres_apt.log
    local opts=(-y -q --no-install-recommends)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${PACKAGES[@]}" >"$log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${PACKAGES[@]}" >>"$log" 2>&1 ||
            { tail -n 30 "$log" >&2; die "apt-get install failed (full output: $log)"; }
    fi
    bindir >/dev/null || die "no pg_ctl under /usr/lib/postgresql after installing"
}

as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        "$@"
    elif [[ $(id -u) == 0 ]]; then
        # From / : the caller's folder may be closed to the postgres user.
        (cd / && runuser -u postgres -- "$@")
    else
        die "run as root or as the postgres user"
    fi
}

running() {
    local bin
    bin=$(bindir) || return 1
    [[ -f $DATA/postmaster.pid ]] && as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

write_env() {
    local url="postgresql://$USER_NAME@$HOST:$PORT/$DATABASE"
    cat >"$ENV_SH" <<EOF
export POSTGRES_STATE='$STATE'
export POSTGRES_PORT='$PORT'
export TRIO_SENDMAIL_POSTGRES_URL='$url'
EOF
    cat >"$ENV_JSON" <<EOF
{"state_dir": "$STATE", "host": "$HOST", "port": $PORT, "database": "$DATABASE",
 "user": "$USER_NAME", "url": "$url"}
EOF
}

cmd_start() {
    ensure_installed
    local bin
    bin=$(bindir)
    mkdir -p "$STATE" "$SOCKDIR"
    chmod 755 "$STATE"
    chown postgres: "$SOCKDIR" 2>/dev/null || true
    if running; then
        say "already running on $HOST:$PORT ($DATA)"
        write_env
        return 0
    fi
    if [[ ! -f $DATA/PG_VERSION ]]; then
        mkdir -p "$DATA"
        chown postgres: "$DATA" 2>/dev/null || true
        chmod 700 "$DATA"
        as_postgres "$bin/initdb" -D "$DATA" -U "$USER_NAME" --auth=trust -E UTF8 \
            >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
    fi
    touch "$LOGFILE"
    chown postgres: "$LOGFILE" 2>/dev/null || true
    as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t "$START_TIMEOUT" \
        -o "-p $PORT -k $SOCKDIR -c listen_addresses=$HOST -c max_connections=100 -c fsync=on" \
        start >/dev/null || die "pg_ctl start failed"
    local i
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        as_postgres "$bin/pg_isready" -q -h "$HOST" -p "$PORT" && break
        sleep 0.5
    done
    as_postgres "$bin/pg_isready" -q -h "$HOST" -p "$PORT" || die "not ready after ${START_TIMEOUT}s"
    if ! as_postgres "$bin/psql" -h "$HOST" -p "$PORT" -U "$USER_NAME" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" postgres | grep -q 1; then
        as_postgres "$bin/createdb" -h "$HOST" -p "$PORT" -U "$USER_NAME" "$DATABASE" ||
            die "createdb failed"
    fi
    write_env
    say "running on $HOST:$PORT (data in $DATA)"
}

cmd_stop() {
    local bin
    if ! bin=$(bindir) || [[ ! -f $DATA/postmaster.pid ]]; then
        say "not running"
        return 0
    fi
    as_postgres "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || die "pg_ctl stop failed"
    say "stopped"
}

cmd_env() {
    [[ -f $ENV_SH ]] || write_env
    cat "$ENV_SH"
}

cmd_purge() {
    case $STATE in
    "" | / | /tmp | /var | /var/tmp | "$HOME") die "refusing to delete $STATE" ;;
    esac
    cmd_stop
    rm -rf -- "$STATE"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) if running; then echo running; else echo stopped; exit 3; fi ;;
env) cmd_env ;;
purge) cmd_purge ;;
*)
    echo "usage: $0 start|stop|status|env|purge" >&2
    exit 2
    ;;
esac
