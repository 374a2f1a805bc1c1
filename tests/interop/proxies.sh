#!/usr/bin/env bash
# Private, loopback-only proxies for the trio_sendmail proxy interop tests.
#
#   tests/interop/proxies.sh start    install the packages if needed, write configs, start, wait
#   tests/interop/proxies.sh stop     stop the proxies this state folder started (idempotent)
#   tests/interop/proxies.sh status   exit 0 if all run, 3 if not
#   tests/interop/proxies.sh env      print `export KEY=VALUE` lines for the tests
#   tests/interop/proxies.sh purge    stop and delete the state folder
#
# Three proxies, each listening on 127.0.0.1 only:
#   microsocks (SOCKS5, RFC 1928) with username/password (RFC 1929)  $PROXIES_SOCKS_PORT (11080)
#   microsocks (SOCKS5) without authentication                       $PROXIES_SOCKS_NOAUTH_PORT (11081)
#   tinyproxy (HTTP CONNECT) with BasicAuth                          $PROXIES_HTTP_PORT (18888)
# tinyproxy tunnels only to the ports of its ConnectPort lines: the private
# Postfix's submission and smtps ports ($PROXIES_CONNECT_PORTS, by default
# those of $POSTFIX_STATE/env.sh, else 10587 and 10465).
#
# Everything (configs, pid files, logs, env.sh, env.json) lives in
# $PROXIES_STATE (default ${TMPDIR:-/tmp}/trio_sendmail_proxies). `stop` ends
# only the processes whose pid files are in that folder. The system's own
# tinyproxy service is never configured, started or stopped.

set -euo pipefail

STATE=${PROXIES_STATE:-${TMPDIR:-/tmp}/trio_sendmail_proxies}
STATE=${STATE%/}
saved_setting() {
    [[ -f $STATE/env.sh ]] || return 0
    sed -n "s/^export PROXIES_$1='\([0-9 ]*\)'\$/\1/p" "$STATE/env.sh"
}
postfix_port() { # SUBMISSION_PORT | SMTPS_PORT
    local file=${POSTFIX_STATE:-${TMPDIR:-/tmp}/trio_sendmail_postfix}/env.sh
    [[ -f $file ]] || return 0
    sed -n "s/^export POSTFIX_$1='\([0-9]*\)'\$/\1/p" "$file"
}
SOCKS_PORT=${PROXIES_SOCKS_PORT:-$(saved_setting SOCKS_PORT)}
SOCKS_PORT=${SOCKS_PORT:-11080}
SOCKS_NOAUTH_PORT=${PROXIES_SOCKS_NOAUTH_PORT:-$(saved_setting SOCKS_NOAUTH_PORT)}
SOCKS_NOAUTH_PORT=${SOCKS_NOAUTH_PORT:-11081}
HTTP_PORT=${PROXIES_HTTP_PORT:-$(saved_setting HTTP_PORT)}
HTTP_PORT=${HTTP_PORT:-18888}
submission=${POSTFIX_SUBMISSION_PORT:-$(postfix_port SUBMISSION_PORT)}
smtps=${POSTFIX_SMTPS_PORT:-$(postfix_port SMTPS_PORT)}
CONNECT_PORTS=${PROXIES_CONNECT_PORTS:-"${submission:-10587} ${smtps:-10465}"}
for port in "$SOCKS_PORT" "$SOCKS_NOAUTH_PORT" "$HTTP_PORT" $CONNECT_PORTS; do
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        echo "proxies.sh: bad port number: $port" >&2
        exit 2
    fi
done
START_TIMEOUT=${PROXIES_START_TIMEOUT:-20}

HOST=127.0.0.1
# Fixed test credentials (loopback-only throw-away proxies).
USER_NAME=trio-proxy-user
PASSWORD=Pr0xy-s3cret-Pa55

LOGDIR=$STATE/log
RUNDIR=$STATE/run
TINYPROXY_CONF=$STATE/tinyproxy.conf
ENV_SH=$STATE/env.sh
ENV_JSON=$STATE/env.json
PACKAGES=(microsocks tinyproxy)
# name:binary:port
SERVICES=("socks:microsocks:$SOCKS_PORT" "socks-noauth:microsocks:$SOCKS_NOAUTH_PORT"
    "http:tinyproxy:$HTTP_PORT")

say() { printf 'proxies.sh: %s\n' "$*" >&2; }
die() {
    printf '\nproxies.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

ensure_installed() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}) and not root: cannot apt-get install"
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"
    say "installing: ${missing[*]}"
    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
        --no-install-recommends)
    local log=${TMPDIR:-/tmp}/trio_sendmail_proxies_apt.log
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >>"$log" 2>&1 || {
            tail -n 40 "$log" >&2
            die "apt-get install ${missing[*]} failed (full output: $log)"
        }
    fi
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || die "package $p is still not installed (full output: $log)"
    done
}

# Exit 0 if something accepts TCP connections on 127.0.0.1:port.
port_open() {
    # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# The pid in $RUNDIR/NAME.pid when that process is still the BINARY we started.
service_pid() { # name binary
    local file=$RUNDIR/$1.pid pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
    printf '%s\n' "$pid"
}

is_running() {
    local entry name binary port
    for entry in "${SERVICES[@]}"; do
        IFS=: read -r name binary port <<<"$entry"
        service_pid "$name" "$binary" >/dev/null || return 1
    done
}

write_tinyproxy_conf() {
    local run_user=nobody run_group
    run_group=$(id -gn "$run_user")
    {
        echo "# Generated by tests/interop/proxies.sh -- rewritten on every start."
        echo "User $run_user"
        echo "Group $run_group"
        echo "Listen $HOST"
        echo "Port $HTTP_PORT"
        echo "Timeout 60"
        echo "MaxClients 200"
        echo "LogLevel Info"
        echo "Allow 127.0.0.1"
        echo "BasicAuth $USER_NAME $PASSWORD"
        echo "DisableViaHeader Yes"
        local p
        for p in $CONNECT_PORTS; do echo "ConnectPort $p"; done
    } >"$TINYPROXY_CONF.new"
    chmod 600 "$TINYPROXY_CONF.new"
    mv -f "$TINYPROXY_CONF.new" "$TINYPROXY_CONF"
}

start_service() { # name binary port
    local name=$1 binary=$2 port=$3 log=$LOGDIR/$1.log
    service_pid "$name" "$binary" >/dev/null && return 0
    if port_open "$port"; then
        die "port $HOST:$port is already in use by another program (set PROXIES_*_PORT to move)"
    fi
    case $name in
    socks) microsocks -i "$HOST" -p "$port" -u "$USER_NAME" -P "$PASSWORD" </dev/null >>"$log" 2>&1 9>&- & ;;
    socks-noauth) microsocks -i "$HOST" -p "$port" </dev/null >>"$log" 2>&1 9>&- & ;;
    http) tinyproxy -d -c "$TINYPROXY_CONF" </dev/null >>"$log" 2>&1 9>&- & ;;
    esac
    echo $! >"$RUNDIR/$name.pid"
    disown || true
}

write_env_files() {
    local q_state q_log
    q_state=$STATE
    q_log=$LOGDIR
    cat >"$ENV_SH.new" <<EOF
export PROXIES_STATE='$q_state'
export PROXIES_HOST='$HOST'
export PROXIES_SOCKS_PORT='$SOCKS_PORT'
export PROXIES_SOCKS_NOAUTH_PORT='$SOCKS_NOAUTH_PORT'
export PROXIES_HTTP_PORT='$HTTP_PORT'
export PROXIES_CONNECT_PORTS='$CONNECT_PORTS'
export PROXIES_USER='$USER_NAME'
export PROXIES_PASSWORD='$PASSWORD'
export PROXIES_LOG_DIR='$q_log'
EOF
    local ports_json
    ports_json=$(printf '%s,' $CONNECT_PORTS)
    cat >"$ENV_JSON.new" <<EOF
{
  "state_dir": "$q_state",
  "host": "$HOST",
  "socks_port": $SOCKS_PORT,
  "socks_noauth_port": $SOCKS_NOAUTH_PORT,
  "http_port": $HTTP_PORT,
  "connect_ports": [${ports_json%,}],
  "user": "$USER_NAME",
  "password": "$PASSWORD",
  "log_dir": "$q_log"
}
EOF
    chmod 644 "$ENV_SH.new" "$ENV_JSON.new"
    mv -f "$ENV_SH.new" "$ENV_SH"
    mv -f "$ENV_JSON.new" "$ENV_JSON"
}

print_status() {
    local entry name binary port pid ok=0
    for entry in "${SERVICES[@]}"; do
        IFS=: read -r name binary port <<<"$entry"
        if pid=$(service_pid "$name" "$binary"); then
            echo "  $name ($binary) $HOST:$port pid $pid"
        else
            echo "  $name ($binary) $HOST:$port NOT running"
            ok=3
        fi
    done
    echo "  state: $STATE, env: $ENV_JSON"
    return $ok
}

cmd_start() {
    local t0=$SECONDS entry name binary port
    ensure_installed
    mkdir -p "$STATE" "$LOGDIR" "$RUNDIR"
    chmod 755 "$STATE"
    write_tinyproxy_conf
    write_env_files
    for entry in "${SERVICES[@]}"; do
        IFS=: read -r name binary port <<<"$entry"
        start_service "$name" "$binary" "$port"
    done
    local deadline=$((SECONDS + START_TIMEOUT)) ready
    while ((SECONDS < deadline)); do
        ready=1
        for entry in "${SERVICES[@]}"; do
            IFS=: read -r name binary port <<<"$entry"
            port_open "$port" || ready=0
            service_pid "$name" "$binary" >/dev/null || {
                tail -n 20 "$LOGDIR/$name.log" >&2 || true
                die "$name ($binary) exited at start (log: $LOGDIR/$name.log)"
            }
        done
        ((ready)) && break
        sleep 0.1
    done
    ((ready)) || die "the proxies did not listen within ${START_TIMEOUT}s (logs: $LOGDIR)"
    echo "proxies: running"
    print_status
    say "started in $((SECONDS - t0))s"
}

cmd_stop() {
    local entry name binary port pid
    for entry in "${SERVICES[@]}"; do
        IFS=: read -r name binary port <<<"$entry"
        if pid=$(service_pid "$name" "$binary"); then
            kill "$pid" 2>/dev/null || true
            local deadline=$((SECONDS + 5))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$RUNDIR/$name.pid"
    done
    echo "proxies: stopped (state $STATE)"
}

cmd_env() {
    if [[ -f $ENV_SH ]]; then cat "$ENV_SH"; else
        mkdir -p "$STATE"
        write_env_files
        cat "$ENV_SH"
    fi
}

cmd_purge() {
    cmd_stop
    case $STATE in
    "" | / | /tmp | /var/tmp | "${HOME:-/}") die "refusing to delete $STATE" ;;
    esac
    rm -rf "$STATE"
    echo "removed $STATE"
}

with_lock() {
    mkdir -p "$(dirname "$STATE")"
    if command -v flock >/dev/null; then
        exec 9>"$STATE.lock"
        flock -w 60 9 || die "could not lock $STATE.lock"
    fi
    "$@"
}

case ${1:-} in
start) with_lock cmd_start ;;
stop) with_lock cmd_stop ;;
status)
    if is_running; then echo "proxies: running"; else echo "proxies: not running"; fi
    print_status
    ;;
env) cmd_env ;;
purge) with_lock cmd_purge ;;
*)
    echo "usage: $0 {start|stop|status|env|purge}" >&2
    exit 2
    ;;
esac
