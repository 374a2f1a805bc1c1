#!/usr/bin/env bash
# Private, loopback-only Dovecot instance for the trio_sendmail interop tests:
# LMTP (RFC 2033) on TCP and on a Unix socket, delivering into Maildirs in the
# state folder (with a quota, so that a recipient can be refused after the end
# of data), and a submission service whose AUTH checks XOAUTH2/OAUTHBEARER
# tokens against an introspection endpoint that the tests serve on loopback.
#
#   tests/interop/dovecot.sh start    install Dovecot if needed, (re)write the config, start, wait
#   tests/interop/dovecot.sh stop     stop the instance (idempotent)
#   tests/interop/dovecot.sh status   exit 0 if running, 3 if not
#   tests/interop/dovecot.sh env      print `export KEY=VALUE` lines for the tests
#   tests/interop/dovecot.sh purge    stop and delete the whole state folder
#
# Everything (config, base_dir, state_dir, Maildirs, certificates, log) lives
# in $DOVECOT_STATE (default ${TMPDIR:-/tmp}/trio_sendmail_dovecot); the
# system's /etc/dovecot instance is never configured, started or stopped.
# Ports (all on 127.0.0.1), from the environment, else those of the last start
# in this state folder, else the defaults:
#   DOVECOT_LMTP_PORT        12024  LMTP
#   DOVECOT_SUBMISSION_PORT  12587  submission (STARTTLS; AUTH PLAIN, XOAUTH2, OAUTHBEARER)
#   DOVECOT_OAUTH_PORT       12080  the token-introspection endpoint (served by the tests)
#   DOVECOT_RELAY_PORT       12026  submission's relay (served by the tests)

set -euo pipefail

STATE=${DOVECOT_STATE:-${TMPDIR:-/tmp}/trio_sendmail_dovecot}
STATE=${STATE%/}
saved_setting() {
    [[ -f $STATE/env.sh ]] || return 0
    sed -n "s/^export DOVECOT_$1='\([0-9]*\)'\$/\1/p" "$STATE/env.sh"
}
LMTP_PORT=${DOVECOT_LMTP_PORT:-$(saved_setting LMTP_PORT)}
LMTP_PORT=${LMTP_PORT:-12024}
SUBMISSION_PORT=${DOVECOT_SUBMISSION_PORT:-$(saved_setting SUBMISSION_PORT)}
SUBMISSION_PORT=${SUBMISSION_PORT:-12587}
OAUTH_PORT=${DOVECOT_OAUTH_PORT:-$(saved_setting OAUTH_PORT)}
OAUTH_PORT=${OAUTH_PORT:-12080}
RELAY_PORT=${DOVECOT_RELAY_PORT:-$(saved_setting RELAY_PORT)}
RELAY_PORT=${RELAY_PORT:-12026}
for port in "$LMTP_PORT" "$SUBMISSION_PORT" "$OAUTH_PORT" "$RELAY_PORT"; do
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        echo "dovecot.sh: bad port number: $port" >&2
        exit 2
    fi
done
START_TIMEOUT=${DOVECOT_START_TIMEOUT:-30}
# Owner of the delivered Maildir files.
VMAIL_USER=${DOVECOT_VMAIL_USER:-nobody}

HOST=127.0.0.1
TLS_HOSTNAME=localhost
DOMAIN=example.test
MYHOSTNAME=lmtp.$DOMAIN
# Every recipient's quota but the "full" one's.
QUOTA_BYTES=10000000
FULL_USER=full
# Password of the PLAIN user on the submission port (throw-away instance).
AUTH_USER=sender
AUTH_PASSWORD=trio-sendmail-dovecot-password

CONF=$STATE/etc
RUN=$STATE/run
LIB=$STATE/lib
MAILDIRS=$STATE/maildirs
TLSDIR=$STATE/tls
LOGDIR=$STATE/log
LOGFILE=$LOGDIR/dovecot.log
ENV_SH=$STATE/env.sh
ENV_JSON=$STATE/env.json
SOCKET=$RUN/lmtp

DOVECOT=/usr/sbin/dovecot
PACKAGES=(dovecot-core dovecot-lmtpd dovecot-submissiond openssl)

say() { printf 'dovecot.sh: %s\n' "$*" >&2; }
die() {
    printf '\ndovecot.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

show_log_tail() {
    if [[ -f $LOGFILE ]]; then
        printf '\n----- last lines of %s -----\n' "$LOGFILE" >&2
        tail -n 40 "$LOGFILE" >&2 || true
        printf -- '----- end of log -----\n' >&2
    fi
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

ensure_installed() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && [[ -x $DOVECOT ]] && return 0
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}) and not root: cannot apt-get install"
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"
    say "installing: ${missing[*]}"
    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
        --no-install-recommends --no-remove)
    local log=${TMPDIR:-/tmp}/trio_sendmail_dovecot_apt.log
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >>"$log" 2>&1 ||
            { tail -n 40 "$log" >&2; die "apt-get install ${missing[*]} failed (full output: $log)"; }
    fi
    # The package may have started the system instance: that one is not ours.
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || die "package $p is still not installed after apt-get (see $log)"
    done
}

make_certs() {
    [[ -f $TLSDIR/server.pem && -f $TLSDIR/ca.pem ]] && return 0
    mkdir -p "$TLSDIR"
    local tmp
    tmp=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=trio_sendmail Dovecot test CA" \
        -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 || die "openssl (CA) failed"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$TLS_HOSTNAME" -keyout "$tmp/server.key" \
        -out "$tmp/server.csr" >/dev/null 2>&1 || die "openssl (CSR) failed"
    printf 'subjectAltName=DNS:%s,IP:127.0.0.1,IP:127.0.0.2\nextendedKeyUsage=serverAuth\n' \
        "$TLS_HOSTNAME" >"$tmp/ext"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tmp/ext" -out "$tmp/server.pem" >/dev/null 2>&1 ||
        die "openssl (certificate) failed"
    install -m 644 "$tmp/ca.pem" "$TLSDIR/ca.pem"
    install -m 644 "$tmp/server.pem" "$TLSDIR/server.pem"
    install -m 600 "$tmp/server.key" "$TLSDIR/server.key"
    rm -rf "$tmp"
}

write_config() {
    mkdir -p "$CONF" "$RUN" "$LIB" "$MAILDIRS" "$LOGDIR"
    chmod 755 "$STATE" "$CONF" "$LOGDIR"
    chown "$VMAIL_USER:" "$MAILDIRS"
    touch "$LOGFILE"
    local uid gid
    uid=$(id -u "$VMAIL_USER")
    gid=$(id -g "$VMAIL_USER")
    # LMTP recipients: user (local part) : : uid : gid : : home : : extra fields
    {
        local user
        for user in alice bob carol dave "$AUTH_USER"; do
            printf '%s::%s:%s::%s/%s::userdb_quota_rule=*:storage=%sB\n' \
                "$user" "$uid" "$gid" "$MAILDIRS" "$user" "$QUOTA_BYTES"
        done
        printf '%s::%s:%s::%s/%s::userdb_quota_rule=*:storage=1B\n' \
            "$FULL_USER" "$uid" "$gid" "$MAILDIRS" "$FULL_USER"
    } >"$CONF/users"
    printf '%s:{PLAIN}%s\n' "$AUTH_USER" "$AUTH_PASSWORD" >"$CONF/passwd"
    chmod 644 "$CONF/users"
    chmod 640 "$CONF/passwd"
    chgrp dovecot "$CONF/passwd"
    cat >"$CONF/oauth2.conf" <<EOF
introspection_mode = post
introspection_url = http://$HOST:$OAUTH_PORT/introspect
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
EOF
    chmod 644 "$CONF/oauth2.conf"
    cat >"$CONF/dovecot.conf" <<EOF
# Written by tests/interop/dovecot.sh; rewritten at every start.
instance_name = trio_sendmail_dovecot_$LMTP_PORT
base_dir = $RUN
state_dir = $LIB
protocols = lmtp submission
listen = $HOST
hostname = $MYHOSTNAME
postmaster_address = postmaster@$DOMAIN
log_path = $LOGFILE
info_log_path = $LOGFILE
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {
  quota = maildir:User quota
}
ssl = yes
ssl_cert = <$TLSDIR/server.pem
ssl_key = <$TLSDIR/server.key
# No penalty or delay after a failed login: the tests fail logins on purpose.
auth_failure_delay = 0
auth_policy_server_url =
auth_mechanisms = plain xoauth2 oauthbearer
auth_username_format = %Ln
# 127.0.0.1 -> 127.0.0.1 counts as secure: plaintext AUTH is offered there.
disable_plaintext_auth = yes
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $CONF/oauth2.conf
  default_fields = nodelay=yes
}
passdb {
  driver = passwd-file
  mechanisms = plain
  args = scheme=PLAIN username_format=%Ln $CONF/passwd
  default_fields = nodelay=yes
}
userdb {
  driver = passwd-file
  args = username_format=%Ln $CONF/users
}
# No auth penalty either (it grows with each failure from one IP, up to 15 s):
# without this socket the auth process disables it.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
lmtp_rcpt_check_quota = no
service lmtp {
  inet_listener lmtp {
    address = $HOST
    port = $LMTP_PORT
  }
  unix_listener lmtp {
    mode = 0666
  }
}
submission_relay_host = $HOST
submission_relay_port = $RELAY_PORT
submission_relay_trusted = yes
submission_relay_ssl = no
service submission-login {
  inet_listener submission {
    address = $HOST
    port = $SUBMISSION_PORT
  }
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = 0
  }
}
EOF
    chmod 644 "$CONF/dovecot.conf"
}

# ---------------------------------------------------------------- env files --

sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

env_entries() {
    cat <<EOF
STATE	state_dir	$STATE	str
HOST	host	$HOST	str
TLS_HOSTNAME	tls_hostname	$TLS_HOSTNAME	str
LMTP_PORT	lmtp_port	$LMTP_PORT	int
LMTP_SOCKET	lmtp_socket	$SOCKET	str
SUBMISSION_PORT	submission_port	$SUBMISSION_PORT	int
OAUTH_PORT	oauth_port	$OAUTH_PORT	int
RELAY_PORT	relay_port	$RELAY_PORT	int
CA_FILE	ca_file	$TLSDIR/ca.pem	str
DOMAIN	domain	$DOMAIN	str
MAILDIR_BASE	maildir_base	$MAILDIRS	str
FULL_USER	full_user	$FULL_USER	str
USER	user	$AUTH_USER	str
PASSWORD	password	$AUTH_PASSWORD	str
LOG_FILE	log_file	$LOGFILE	str
ENV_JSON	env_json	$ENV_JSON	str
EOF
}

render_env_sh() {
    local name key value kind
    while IFS=$'\t' read -r name key value kind; do
        printf 'export DOVECOT_%s=%s\n' "$name" "$(sh_quote "$value")"
    done < <(env_entries)
}

render_env_json() {
    local name key value kind sep=""
    printf '{\n'
    while IFS=$'\t' read -r name key value kind; do
        if [[ $kind == int ]]; then
            printf '%s  "%s": %s' "$sep" "$key" "$value"
        else
            printf '%s  "%s": %s' "$sep" "$key" "$(json_str "$value")"
        fi
        sep=$',\n'
    done < <(env_entries)
    printf '\n}\n'
}

write_env_files() {
    render_env_sh >"$ENV_SH.new"
    render_env_json >"$ENV_JSON.new"
    chmod 644 "$ENV_SH.new" "$ENV_JSON.new"
    mv -f "$ENV_SH.new" "$ENV_SH"
    mv -f "$ENV_JSON.new" "$ENV_JSON"
}

# ------------------------------------------------------------ run / probe --

master_pid() {
    local pid
    pid=$(cat "$RUN/master.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

is_running() { master_pid >/dev/null; }

port_open() {
    # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

lmtp_greeting() {
    # shellcheck disable=SC2016 # the script is for the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        printf "QUIT\r\n" >&3
        printf "%s\n" "${line%$'"'"'\r'"'"'}"
    ' "$HOST" "$1" 2>/dev/null
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if [[ $(lmtp_greeting "$LMTP_PORT") == 220* && -S $SOCKET ]] &&
            [[ $(lmtp_greeting "$SUBMISSION_PORT") == 220* ]]; then
            return 0
        fi
        is_running || return 1
        sleep 0.2
    done
    return 1
}

print_status() {
    local pid
    if pid=$(master_pid); then
        echo "dovecot test instance: running (master pid $pid), state $STATE"
        echo "  lmtp $HOST:$LMTP_PORT and $SOCKET; submission $HOST:$SUBMISSION_PORT"
        echo "  log: $LOGFILE"
        echo "  env: $ENV_JSON"
        return 0
    fi
    echo "dovecot test instance: not running (state $STATE)"
    return 3
}

cmd_start() {
    ensure_installed
    mkdir -p "$STATE"
    if is_running; then
        write_env_files
        print_status
        return 0
    fi
    local p
    for p in "$LMTP_PORT" "$SUBMISSION_PORT"; do
        port_open "$p" && die "port $HOST:$p is already in use (set DOVECOT_*_PORT to move)"
    done
    make_certs
    write_config
    write_env_files
    local out
    out=$($DOVECOT -c "$CONF/dovecot.conf" -n 2>&1 >/dev/null) ||
        die "the configuration is refused: $out"
    # The daemon must not hold the caller's stdout/stderr open (a pipe would never end).
    $DOVECOT -c "$CONF/dovecot.conf" </dev/null >>"$LOGFILE" 2>&1 ||
        { show_log_tail; die "dovecot failed to start"; }
    if ! wait_ready; then
        show_log_tail
        die "dovecot did not answer on $HOST:$LMTP_PORT within ${START_TIMEOUT}s"
    fi
    print_status
}

cmd_stop() {
    local pid
    pid=$(master_pid) || { echo "dovecot test instance: not running (state $STATE)"; return 0; }
    $DOVECOT -c "$CONF/dovecot.conf" stop 2>/dev/null || kill "$pid"
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "dovecot (pid $pid) did not stop"
    echo "dovecot test instance: stopped (state $STATE)"
}

cmd_env() {
    [[ -f $ENV_SH ]] || die "no $ENV_SH: run '$0 start' first"
    cat "$ENV_SH"
}

cmd_purge() {
    cmd_stop
    case $STATE in
    "" | / | /tmp | /var | "$HOME") die "refusing to delete $STATE" ;;
    esac
    rm -rf "$STATE"
    echo "dovecot test instance: purged $STATE"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) print_status ;;
env) cmd_env ;;
purge) cmd_purge ;;
*)
    echo "usage: $0 start|stop|status|env|purge" >&2
    exit 2
    ;;
esac
