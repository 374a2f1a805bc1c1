#!/usr/bin/env bash
# Private, loopback-only Postfix instance for the trio_sendmail interop tests.
#
#   tests/interop/postfix.sh start    install Postfix if needed, (re)write the config, start, wait
#   tests/interop/postfix.sh stop     stop the instance (idempotent)
#   tests/interop/postfix.sh status   exit 0 if running, 3 if not
#   tests/interop/postfix.sh env      print `export KEY=VALUE` lines for the tests
#   tests/interop/postfix.sh purge    stop and delete the whole state folder
#
# Everything (config, queue, maildirs, certificates, SASL db, log) lives in
# $POSTFIX_STATE (default ${TMPDIR:-/tmp}/trio_sendmail_postfix); the system's
# /etc/postfix instance is never configured, started or stopped.  Nothing is
# ever delivered off the machine: there is no smtp/relay/lmtp transport in
# master.cf, and every transport but the local Maildir pipe is error(8).
#
# See tests/interop/README.md for what the instance offers.

set -euo pipefail

# ---------------------------------------------------------------- settings --

STATE=${POSTFIX_STATE:-${TMPDIR:-/tmp}/trio_sendmail_postfix}
STATE=${STATE%/}
# Ports: from the environment, else those of the last start in this state
# folder (so status/stop/env find a running instance), else the defaults.
saved_setting() {
    [[ -f $STATE/env.sh ]] || return 0
    sed -n "s/^export POSTFIX_$1='\([0-9]*\)'\$/\1/p" "$STATE/env.sh"
}
PLAIN_PORT=${POSTFIX_PLAIN_PORT:-$(saved_setting PLAIN_PORT)}
PLAIN_PORT=${PLAIN_PORT:-10025}
SUBMISSION_PORT=${POSTFIX_SUBMISSION_PORT:-$(saved_setting SUBMISSION_PORT)}
SUBMISSION_PORT=${SUBMISSION_PORT:-10587}
SMTPS_PORT=${POSTFIX_SMTPS_PORT:-$(saved_setting SMTPS_PORT)}
SMTPS_PORT=${SMTPS_PORT:-10465}
# Submission with the challenge-response mechanisms (CRAM-MD5, SCRAM-SHA-256).
SASL_PORT=${POSTFIX_SASL_PORT:-$(saved_setting SASL_PORT)}
SASL_PORT=${SASL_PORT:-10588}
for port in "$PLAIN_PORT" "$SUBMISSION_PORT" "$SMTPS_PORT" "$SASL_PORT"; do
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        echo "postfix.sh: bad port number: $port" >&2
        exit 2
    fi
done
START_TIMEOUT=${POSTFIX_START_TIMEOUT:-30}
# Owner of the delivered Maildir files (pipe(8) refuses to run as root).
VMAIL_USER=${POSTFIX_VMAIL_USER:-nobody}

HOST=127.0.0.1
TLS_HOSTNAME=localhost
DOMAIN=example.test
MYHOSTNAME=mail.$DOMAIN
SIZE_LIMIT=40000000

# Fixed test credentials (loopback-only throw-away instance).
AUTH_USER=sender@$DOMAIN
AUTH_PASSWORD=trio-sendmail-test-password
UTF8_AUTH_USER="jöran@$DOMAIN"
UTF8_AUTH_PASSWORD="pässwörd-ünïcode"

CONF=$STATE/etc
QUEUE=$STATE/queue
DATA=$STATE/data
MAILDIRS=$STATE/maildirs
TLSDIR=$STATE/tls
SASLDIR=$CONF/sasl
LOGDIR=$STATE/log
LOGFILE=$LOGDIR/postfix.log
ENV_SH=$STATE/env.sh
ENV_JSON=$STATE/env.json

POSTFIX=/usr/sbin/postfix
POSTCONF=/usr/sbin/postconf

PACKAGES=(postfix sasl2-bin libsasl2-modules openssl)

# ----------------------------------------------------------------- helpers --

say() { printf 'postfix.sh: %s\n' "$*" >&2; }
die() {
    printf '\npostfix.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

show_log_tail() {
    if [[ -f $LOGFILE ]]; then
        printf '\n----- last lines of %s -----\n' "$LOGFILE" >&2
        tail -n 40 "$LOGFILE" >&2 || true
        printf -- '----- end of log -----\n' >&2
    else
        printf '\n(no log file at %s)\n' "$LOGFILE" >&2
    fi
}

ipv6_available() {
    [[ ${POSTFIX_IPV6:-auto} == 0 ]] && return 1
    [[ -r /proc/net/if_inet6 ]] &&
        grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# -------------------------------------------------------------- installing --

ensure_installed() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)) && [[ -x $POSTFIX ]]; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}) and not root: cannot apt-get install"
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"

    say "installing: ${missing[*]}"
    if ! pkg_installed postfix; then
        # A first install must not configure (or start) the system instance:
        # "No configuration" leaves /etc/postfix/main.cf absent, and then the
        # package's init script exits without doing anything.
        printf '%s\n' \
            'postfix postfix/main_mailer_type select No configuration' \
            'postfix postfix/mailname string localhost' |
            debconf-set-selections || die "debconf-set-selections failed"
    fi

    local apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
        --no-install-recommends)
    local log=${TMPDIR:-/tmp}/trio_sendmail_postfix_apt.log
    if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >"$log" 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        if ! DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >>"$log" 2>&1; then
            tail -n 40 "$log" >&2
            die "apt-get install ${missing[*]} failed (full output: $log)"
        fi
    fi
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || {
            tail -n 40 "$log" >&2
            die "package $p is still not installed after apt-get (full output: $log)"
        }
    done
    [[ -x $POSTFIX ]] || die "$POSTFIX missing after installing postfix"
    $POSTCONF -a 2>/dev/null | grep -qx cyrus || die "this Postfix has no Cyrus SASL support"
    say "installed: ${missing[*]}"
}

# ------------------------------------------------------------ certificates --

make_certs() {
    mkdir -p "$TLSDIR"
    chmod 755 "$TLSDIR"
    local ca_key=$TLSDIR/ca.key ca=$TLSDIR/ca.pem key=$TLSDIR/server.key crt=$TLSDIR/server.pem

    # Keep an existing CA/leaf as long as it is valid for another day, so a
    # restart does not invalidate CA paths that a test session already read.
    if [[ -s $ca && -s $ca_key && -s $key && -s $crt ]] &&
        openssl x509 -in "$ca" -noout -checkend 86400 >/dev/null 2>&1 &&
        openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1; then
        return 0
    fi
    say "creating a throw-away CA and a server certificate in $TLSDIR"
    rm -f "$TLSDIR"/*
    local tmp
    tmp=$(mktemp -d "$TLSDIR/.tmp.XXXXXX")

    (
        umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/server.key"
    ) 2>"$tmp/err" || { cat "$tmp/err" >&2; die "openssl key generation failed"; }

    cat >"$tmp/ca.ext" <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    local san="DNS:localhost, IP:127.0.0.1"
    ipv6_available && san="$san, IP:::1"
    # Always put ::1 into the certificate: it costs nothing and keeps the
    # certificate identical whether or not this host has IPv6.
    [[ $san == *"::1"* ]] || san="$san, IP:::1"
    cat >"$tmp/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    {
        openssl req -new -key "$tmp/ca.key" -subj "/O=trio_sendmail tests/CN=trio_sendmail throw-away test CA" \
            -out "$tmp/ca.csr" &&
            openssl x509 -req -in "$tmp/ca.csr" -signkey "$tmp/ca.key" -days 825 -sha256 \
                -extfile "$tmp/ca.ext" -out "$tmp/ca.pem" &&
            openssl req -new -key "$tmp/server.key" -subj "/O=trio_sendmail tests/CN=localhost" \
                -out "$tmp/server.csr" &&
            openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
                -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
                -extfile "$tmp/leaf.ext" -out "$tmp/server.pem" &&
            openssl verify -CAfile "$tmp/ca.pem" "$tmp/server.pem"
    } >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; die "openssl certificate generation failed"; }

    mv "$tmp/ca.key" "$ca_key"
    mv "$tmp/server.key" "$key"
    mv "$tmp/ca.pem" "$ca"
    mv "$tmp/server.pem" "$crt"
    rm -rf "$tmp"
    chmod 600 "$ca_key" "$key"
    chmod 644 "$ca" "$crt"
}

# ----------------------------------------------------------- configuration --

write_config() {
    local daemon_dir inet_protocols vuid vgid
    daemon_dir=$($POSTCONF -d -h daemon_directory)
    if ipv6_available; then inet_protocols=all; else inet_protocols=ipv4; fi
    vuid=$(id -u "$VMAIL_USER") || die "no user $VMAIL_USER for Maildir delivery"
    vgid=$(id -g "$VMAIL_USER")
    ((vuid != 0)) || die "POSTFIX_VMAIL_USER must not be root"

    mkdir -p "$CONF" "$SASLDIR" "$LOGDIR" "$MAILDIRS" "$QUEUE"
    chmod 755 "$STATE" "$CONF" "$SASLDIR" "$LOGDIR" "$QUEUE"
    chown root:root "$STATE" "$CONF" "$SASLDIR" "$LOGDIR" "$QUEUE"
    chown "$vuid:$vgid" "$MAILDIRS"
    chmod 755 "$MAILDIRS"

    # Postfix wants the queue subdirectories owned by the *current* postfix
    # uid; if the state folder outlived a reinstall, start the queue afresh.
    if [[ -d $QUEUE/active && $(stat -c %U "$QUEUE/active") != postfix ]]; then
        say "queue directory has stale ownership; recreating it"
        rm -rf "$QUEUE" "$DATA"
        mkdir -p "$QUEUE"
    fi

    # main.cf: one file, written in full on every start so edits to this
    # script always take effect.  Values in comments explain the choices.
    cat >"$CONF/main.cf.new" <<EOF
# Generated by tests/interop/postfix.sh -- do not edit, rewritten on every start.
compatibility_level = 3.6

# --- where this instance keeps its state (nothing under /etc or /var) ---
config_directory = $CONF
queue_directory = $QUEUE
data_directory = $DATA
daemon_directory = $daemon_dir
mail_owner = postfix
setgid_group = postdrop
maillog_file = $LOGFILE
maillog_file_prefixes = $STATE
syslog_name = postfix-trio-test

# --- identity ---
myhostname = $MYHOSTNAME
mydomain = $DOMAIN
myorigin = \$mydomain
smtpd_banner = \$myhostname ESMTP trio_sendmail test instance
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no

# --- loopback only, and nothing ever leaves the machine ---
inet_interfaces = loopback-only
inet_protocols = $inet_protocols
mynetworks = 127.0.0.0/8 [::1]/128
relayhost =
relay_domains =
default_transport = error:5.7.1 no outbound delivery from the trio_sendmail test instance
relay_transport = \$default_transport
local_transport = \$default_transport
smtpd_peername_lookup = no

# --- delivery: any <local>@$DOMAIN goes to the Maildir $MAILDIRS/<local>/ ---
# virtual(8) refuses \$1 substitution from regexp tables (a deliberate
# security rule), so it cannot choose a Maildir per local part of an
# unlisted address; a pipe(8) transport running the small deliver-maildir
# script does that instead.  pipe(8) and virtual(8) copy the message out of
# the queue with the same code (LF line ends, Delivered-To/Return-Path
# prepended).  virtual_mailbox_maps only lets smtpd refuse bad local parts.
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_maps = regexp:$CONF/vmailbox.regexp
virtual_transport = testmaildir
testmaildir_destination_recipient_limit = 1
message_size_limit = $SIZE_LIMIT
mailbox_size_limit = 0

# Do not rewrite or add headers (no Message-ID/Date/From/To filled in, no
# address canonicalisation): only Received is prepended by smtpd/cleanup and
# Return-Path / Delivered-To by the Maildir pipe (flags D and R).
local_header_rewrite_clients =
always_add_missing_headers = no

# --- protocol features ---
smtputf8_enable = yes
# Refuse UTF-8 envelope addresses unless MAIL FROM says SMTPUTF8 (as a strict server would).
strict_smtputf8 = yes
smtpd_discard_ehlo_keywords =

# --- restrictions ---
# Reject at the stage a command belongs to (MAIL patterns at MAIL, RCPT at RCPT).
smtpd_delay_reject = no
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions = check_sender_access regexp:$CONF/sender_access.regexp
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access regexp:$CONF/recipient_access.regexp
header_checks = regexp:$CONF/header_checks.regexp

# --- keep tests fast: no tarpitting, generous error/junk limits ---
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
smtpd_junk_command_limit = 1000
in_flow_delay = 0
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0

# --- TLS (per-port security level is set in master.cf) ---
smtpd_tls_chain_files = $TLSDIR/server.key, $TLSDIR/server.pem
smtpd_tls_security_level = none
smtpd_tls_loglevel = 1
smtpd_tls_received_header = no

# --- SASL (Cyrus, sasldb file, no daemon; enabled per port in master.cf) ---
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $SASLDIR
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_local_domain =
smtpd_sasl_authenticated_header = no
broken_sasl_auth_clients = no
EOF

    # master.cf: only the daemons this instance needs.  Deliberately no
    # smtp, relay, lmtp, local or pipe services, so even a configuration
    # mistake cannot send mail anywhere.
    cat >"$CONF/master.cf.new" <<EOF
# Generated by tests/interop/postfix.sh -- do not edit, rewritten on every start.
# service     type  private unpriv chroot wakeup maxproc command + args
# Plain SMTP for "local relay" mode: no TLS, no AUTH.
$PLAIN_PORT   inet  n       -      n      -      -       smtpd
  -o syslog_name=postfix-trio-test/plain
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
# Submission: STARTTLS mandatory, then AUTH PLAIN/LOGIN; unauthenticated MAIL refused.
$SUBMISSION_PORT   inet  n       -      n      -      -       smtpd
  -o syslog_name=postfix-trio-test/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sender_restrictions=check_sender_access,regexp:$CONF/sender_access.regexp,permit_sasl_authenticated,check_sender_access,regexp:$CONF/need_auth.regexp
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject_unauth_destination
# Submission offering AUTH SCRAM-SHA-256 CRAM-MD5 (Cyrus "smtpd-strong" config).
$SASL_PORT   inet  n       -      n      -      -       smtpd
  -o syslog_name=postfix-trio-test/sasl
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_path=smtpd-strong
  -o smtpd_sender_restrictions=check_sender_access,regexp:$CONF/sender_access.regexp,permit_sasl_authenticated,check_sender_access,regexp:$CONF/need_auth.regexp
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject_unauth_destination
# Implicit TLS ("smtps"), same AUTH rules as submission.
$SMTPS_PORT   inet  n       -      n      -      -       smtpd
  -o syslog_name=postfix-trio-test/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sender_restrictions=check_sender_access,regexp:$CONF/sender_access.regexp,permit_sasl_authenticated,check_sender_access,regexp:$CONF/need_auth.regexp
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject_unauth_destination
pickup        unix  n       -      n      60     1       pickup
cleanup       unix  n       -      n      -      0       cleanup
qmgr          unix  n       -      n      300    1       qmgr
tlsmgr        unix  -       -      n      1000?  1       tlsmgr
rewrite       unix  -       -      n      -      -       trivial-rewrite
bounce        unix  -       -      n      -      0       bounce
defer         unix  -       -      n      -      0       bounce
trace         unix  -       -      n      -      0       bounce
verify        unix  -       -      n      -      1       verify
flush         unix  n       -      n      1000?  0       flush
proxymap      unix  -       -      n      -      -       proxymap
proxywrite    unix  -       -      n      -      1       proxymap
showq         unix  n       -      n      -      -       showq
error         unix  -       -      n      -      -       error
retry         unix  -       -      n      -      -       error
discard       unix  -       -      n      -      -       discard
testmaildir   unix  -       n      n      -      -       pipe
  flags=DRXu user=$VMAIL_USER argv=$CONF/deliver-maildir $MAILDIRS \${user}
anvil         unix  -       -      n      -      1       anvil
scache        unix  -       -      n      -      1       scache
postlog       unix-dgram n  -      n      -      1       postlogd
EOF

    # Lookup tables.  Postfix case-folds the key before the lookup, so
    # Alice@… and alice@… share the Maildir "alice".
    cat >"$CONF/vmailbox.regexp.new" <<EOF
# Any <local>@$DOMAIN exists, except local parts that start with "." or
# contain "/" (they would not make a safe Maildir name).  smtpd looks up
# local parts that need quoting in their quoted form ("a b"@...).
# ("%" delimits the pattern because "/" occurs inside it.)
%^([^./@"]|"[^./@])[^/@]*@${DOMAIN//./\\.}\$%	OK
EOF
    # Runs as $VMAIL_USER under pipe(8): message on stdin with LF line ends.
    cat >"$CONF/deliver-maildir.new" <<'EOF'
#!/bin/sh
# deliver-maildir BASE LOCALPART -- store stdin as one new Maildir message
# in BASE/LOCALPART/new/ (generated by tests/interop/postfix.sh).
umask 022
base=$1
user=$2
case $user in
'' | .* | */*)
    echo "deliver-maildir: unusable local part: $user"
    exit 67 # EX_NOUSER: bounce
    ;;
esac
dir=$base/$user
mkdir -p "$dir/tmp" "$dir/new" "$dir/cur" || exit 74
tmp=$(mktemp "$dir/tmp/$(date +%s.%N).P$$.XXXXXX") || exit 74
if ! cat >"$tmp"; then
    rm -f "$tmp"
    exit 74 # EX_IOERR: bounce instead of retrying, so tests fail fast
fi
chmod 644 "$tmp" # readable by whoever runs the tests
mv "$tmp" "$dir/new/${tmp##*/}" || exit 74
exit 0
EOF
    cat >"$CONF/recipient_access.regexp.new" <<'EOF'
# RCPT TO refusal patterns (any domain), answered at RCPT time.
/^reject-[^@]*@/	550 5.1.1 Recipient refused by the test pattern reject-*
/^tempfail-[^@]*@/	450 4.2.0 Recipient temporarily refused by the test pattern tempfail-*
EOF
    cat >"$CONF/sender_access.regexp.new" <<'EOF'
# MAIL FROM refusal patterns (any domain), answered at MAIL time.
/^reject-[^@]*@/	550 5.7.1 Sender refused by the test pattern reject-*
/^tempfail-[^@]*@/	451 4.3.0 Sender temporarily refused by the test pattern tempfail-*
EOF
    cat >"$CONF/need_auth.regexp.new" <<'EOF'
# Submission ports: any MAIL FROM (including <>) without AUTH is refused.
/./	530 5.7.0 Authentication required
EOF
    cat >"$CONF/header_checks.regexp.new" <<'EOF'
# Whole-message refusals after the data phase (end of DATA / last BDAT).
/^X-Trio-Test-Reject:/	REJECT 5.7.1 Message refused by the test header X-Trio-Test-Reject
/^X-Trio-Test-Tempfail:/	REJECT 4.7.1 Message temporarily refused by the test header X-Trio-Test-Tempfail
EOF
    local f
    chmod 755 "$CONF/deliver-maildir.new"
    mv -f "$CONF/deliver-maildir.new" "$CONF/deliver-maildir"
    for f in main.cf master.cf vmailbox.regexp recipient_access.regexp sender_access.regexp \
        need_auth.regexp header_checks.regexp; do
        chmod 644 "$CONF/$f.new"
        mv -f "$CONF/$f.new" "$CONF/$f"
    done
    # Postfix re-reads a main.cf modified within the last second or so, 300 ms
    # at a time, in every command (postfix check/start: ~2 s lost).  Backdate.
    touch -d "@$(($(date +%s) - 10))" "$CONF"/*.cf "$CONF"/*.regexp

    # Cyrus SASL: auxprop plugin reading a sasldb file; no saslauthd daemon.
    cat >"$SASLDIR/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $SASLDIR/sasldb2
mech_list: PLAIN LOGIN
log_level: 3
EOF
    chmod 644 "$SASLDIR/smtpd.conf"
    # The challenge-response mechanisms need the secrets themselves, which the
    # sasldb keeps (saslpasswd2 also stores the SCRAM verifiers).
    sed 's/^mech_list: .*/mech_list: SCRAM-SHA-256 CRAM-MD5/' "$SASLDIR/smtpd.conf" \
        >"$SASLDIR/smtpd-strong.conf"
    chmod 644 "$SASLDIR/smtpd-strong.conf"
    rm -f "$SASLDIR"/sasldb2*
    add_sasl_user "$AUTH_USER" "$AUTH_PASSWORD"
    add_sasl_user "$UTF8_AUTH_USER" "$UTF8_AUTH_PASSWORD"
    chown root:postfix "$SASLDIR"/sasldb2*
    chmod 640 "$SASLDIR"/sasldb2*

    mkdir -p "$LOGDIR"
    touch "$LOGFILE"
    chmod 644 "$LOGFILE"
}

add_sasl_user() { # user@realm password
    local user=${1%@*} realm=${1#*@}
    printf '%s' "$2" | saslpasswd2 -p -c -f "$SASLDIR/sasldb2" -u "$realm" "$user" ||
        die "saslpasswd2 failed for $1"
}

# --------------------------------------------------------------- env files --

sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# name (without POSTFIX_), json key, value, kind (str|int)
env_entries() {
    local host6=""
    ipv6_available && host6=::1
    cat <<EOF
STATE	state_dir	$STATE	str
CONFIG_DIR	config_dir	$CONF	str
HOST	host	$HOST	str
HOST6	host6	$host6	str
TLS_HOSTNAME	tls_hostname	$TLS_HOSTNAME	str
PLAIN_PORT	plain_port	$PLAIN_PORT	int
SUBMISSION_PORT	submission_port	$SUBMISSION_PORT	int
SMTPS_PORT	smtps_port	$SMTPS_PORT	int
SASL_PORT	sasl_port	$SASL_PORT	int
CA_FILE	ca_file	$TLSDIR/ca.pem	str
DOMAIN	domain	$DOMAIN	str
MAILDIR_BASE	maildir_base	$MAILDIRS	str
USER	user	$AUTH_USER	str
PASSWORD	password	$AUTH_PASSWORD	str
UTF8_USER	utf8_user	$UTF8_AUTH_USER	str
UTF8_PASSWORD	utf8_password	$UTF8_AUTH_PASSWORD	str
SIZE_LIMIT	size_limit	$SIZE_LIMIT	int
LOG_FILE	log_file	$LOGFILE	str
ENV_JSON	env_json	$ENV_JSON	str
EOF
}

render_env_sh() {
    local name key value kind
    while IFS=$'\t' read -r name key value kind; do
        printf 'export POSTFIX_%s=%s\n' "$name" "$(sh_quote "$value")"
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

is_running() {
    [[ -x $POSTFIX && -f $CONF/main.cf ]] || return 1
    $POSTFIX -c "$CONF" status >/dev/null 2>&1
}

# Exit 0 if something accepts TCP connections on 127.0.0.1:port.
port_open() {
    # shellcheck disable=SC2016 # $0/$1 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# Read the SMTP greeting on a plain port; print it.
plain_greeting() {
    # shellcheck disable=SC2016 # the script is for the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        IFS= read -r line <&3 || exit 1
        printf "QUIT\r\n" >&3
        printf "%s\n" "${line%$'"'"'\r'"'"'}"
    ' "$HOST" "$1" 2>/dev/null
}

# TLS handshake (verified against our CA) and greeting on the implicit-TLS port.
tls_greeting() {
    local out
    out=$( (
        sleep 0.5
        printf 'QUIT\r\n'
    ) | timeout 8 openssl s_client -quiet -connect "$HOST:$1" -servername "$TLS_HOSTNAME" \
        -verify_hostname "$TLS_HOSTNAME" -CAfile "$TLSDIR/ca.pem" -verify_return_error 2>/dev/null) || true
    printf '%s\n' "$out" | grep -m1 '^220' | tr -d '\r'
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) ok
    while ((SECONDS < deadline)); do
        ok=1
        [[ $(plain_greeting "$PLAIN_PORT") == 220* ]] || ok=0
        ((ok)) && { [[ $(plain_greeting "$SUBMISSION_PORT") == 220* ]] || ok=0; }
        ((ok)) && { [[ $(tls_greeting "$SMTPS_PORT") == 220* ]] || ok=0; }
        ((ok)) && { [[ $(plain_greeting "$SASL_PORT") == 220* ]] || ok=0; }
        ((ok)) && return 0
        is_running || return 1
        sleep 0.2
    done
    return 1
}

print_status() {
    if is_running; then
        local pid
        pid=$(sed -n '1{s/ //g;p}' "$QUEUE/pid/master.pid" 2>/dev/null || true)
        echo "postfix test instance: running (master pid ${pid:-?}), state $STATE"
        local p
        for p in "plain:$PLAIN_PORT" "submission:$SUBMISSION_PORT" "smtps:$SMTPS_PORT" \
            "sasl:$SASL_PORT"; do
            if port_open "${p#*:}"; then
                echo "  ${p%%:*} $HOST:${p#*:} accepting"
            else
                echo "  ${p%%:*} $HOST:${p#*:} NOT accepting"
            fi
        done
        echo "  log: $LOGFILE"
        echo "  env: $ENV_JSON"
        return 0
    fi
    echo "postfix test instance: not running (state $STATE)"
    return 3
}

# --------------------------------------------------------------- commands --

cmd_start() {
    local t0=$SECONDS
    ensure_installed
    mkdir -p "$STATE"
    if is_running; then
        write_env_files
        print_status
        return 0
    fi
    local p
    for p in "$PLAIN_PORT" "$SUBMISSION_PORT" "$SMTPS_PORT" "$SASL_PORT"; do
        if port_open "$p"; then
            if command -v ss >/dev/null; then ss -ltnp "sport = :$p" >&2 || true; fi
            die "port $HOST:$p is already in use by another program (set POSTFIX_*_PORT to move)"
        fi
    done
    make_certs
    write_config
    write_env_files

    local out
    if ! out=$($POSTFIX -c "$CONF" check 2>&1); then
        printf '%s\n' "$out" >&2
        show_log_tail
        die "postfix check failed for $CONF"
    fi
    if ! out=$($POSTFIX -c "$CONF" start 2>&1); then
        printf '%s\n' "$out" >&2
        show_log_tail
        die "postfix start failed"
    fi
    if ! wait_ready; then
        printf '%s\n' "$out" >&2
        show_log_tail
        $POSTFIX -c "$CONF" stop >/dev/null 2>&1 || true
        die "postfix did not answer on ports $PLAIN_PORT/$SUBMISSION_PORT/$SMTPS_PORT within ${START_TIMEOUT}s"
    fi
    print_status
    say "started in $((SECONDS - t0))s"
}

cmd_stop() {
    if ! is_running; then
        echo "postfix test instance: not running (state $STATE)"
        return 0
    fi
    local out
    out=$($POSTFIX -c "$CONF" stop 2>&1) || {
        printf '%s\n' "$out" >&2
        is_running && die "postfix stop failed"
    }
    # postfix stop returns once the master is gone; make sure the listeners are too.
    local deadline=$((SECONDS + 10)) p busy
    while ((SECONDS < deadline)); do
        busy=0
        for p in "$PLAIN_PORT" "$SUBMISSION_PORT" "$SMTPS_PORT" "$SASL_PORT"; do
            port_open "$p" && busy=1
        done
        ((busy)) || break
        sleep 0.1
    done
    echo "postfix test instance: stopped"
}

cmd_env() {
    if [[ -f $ENV_SH ]]; then
        cat "$ENV_SH"
    else
        render_env_sh
    fi
}

cmd_purge() {
    cmd_stop
    case $STATE in
    "" | / | /tmp | /var/tmp | "$HOME") die "refusing to delete $STATE" ;;
    esac
    if [[ -d $STATE ]]; then
        rm -rf "$STATE"
        echo "removed $STATE"
    fi
}

with_lock() {
    [[ $(id -u) == 0 ]] || die "run as root: the Postfix master needs root"
    mkdir -p "$(dirname "$STATE")"
    if command -v flock >/dev/null; then
        exec 9>"$STATE.lock"
        flock -w 120 9 || die "could not lock $STATE.lock"
    fi
    "$@"
}

usage() {
    echo "usage: $0 {start|stop|status|env|purge}" >&2
    exit 2
}

case ${1:-} in
start) with_lock cmd_start ;;
stop) with_lock cmd_stop ;;
status) print_status ;;
env) cmd_env ;;
purge) with_lock cmd_purge ;;
*) usage ;;
esac
