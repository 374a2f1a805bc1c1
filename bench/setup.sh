#!/usr/bin/env bash
# Installs what the benchmarks need from Debian's packages, when missing:
# Postfix (for smtp-sink and smtp-source; its system instance is left
# unconfigured and stopped) and stunnel4 (TLS termination for the TLS rows).
set -euo pipefail

missing=()
[[ -x /usr/sbin/smtp-sink && -x /usr/sbin/smtp-source ]] || missing+=(postfix)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "bench/setup.sh: missing ${missing[*]} and not root: install them first" >&2
    exit 1
fi
# A first Postfix install must not configure (or start) the system instance.
printf '%s\n' 'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string localhost' | debconf-set-selections
opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold)
log=${TMPDIR:-/tmp}/trio_sendmail_bench_apt.log
if ! DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >"$log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >>"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        echo "bench/setup.sh: apt-get install ${missing[*]} failed" >&2
        exit 1
    }
fi
echo "bench/setup.sh: installed ${missing[*]}"
