"""``trio-sendmail --serverinfo``: what the server says about itself; nothing is sent.

Like msmtp's ``--serverinfo``: connect as configured (TLS included, with the
certificate verified as for sending), then print the greeting, the EHLO
capabilities (after TLS when there is TLS), and the server certificate's subject,
issuer and validity, and say QUIT. No AUTH is attempted, so no password is looked
up or sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import trio

from .. import Session, open_session
from ._common import EX_OK, TLS_CHOICES, CLIError, exit_status, transcript_to
from ._config import Settings, resolve_settings

__all__ = ["run_serverinfo"]


def _name(entries: Any) -> str:
    """``CN=mail.example.com, O=Example`` from ``getpeercert()``'s nested tuples."""
    parts = []
    for rdn in entries or ():
        for key, value in rdn:
            short = {"commonName": "CN", "organizationName": "O", "countryName": "C",
                     "organizationalUnitName": "OU", "localityName": "L",
                     "stateOrProvinceName": "ST"}.get(key, key)  # fmt: skip
            parts.append(f"{short}={value}")
    return ", ".join(parts) or "-"


def _certificate(session: Session) -> Mapping[str, Any] | None:
    stream = session._driver.stream  # the CLI is part of the library
    if isinstance(stream, trio.SSLStream):
        certificate = stream.getpeercert()
        return certificate or None
    return None


async def _collect(settings: Settings) -> list[tuple[str, str]]:
    tls_names = {mode: name for name, mode in TLS_CHOICES.items()}
    async with open_session(settings.connection()) as session:
        rows = [
            ("server", f"{settings.host} port {settings.connection().resolved_port}"),
            ("tls", f"{tls_names[settings.tls]} ({'on' if session.tls else 'off'})"),
        ]
        greeting = session.greeting
        rows.append(("greeting", "-" if greeting is None else str(greeting)))
        caps = session.capabilities
        rows.append(("ehlo name", caps.server_name or "-"))
        for keyword, params in caps.items():
            rows.append(("capability", " ".join((keyword, *params))))
        certificate = _certificate(session)
        if certificate is not None:
            rows.append(("certificate subject", _name(certificate.get("subject"))))
            rows.append(("certificate issuer", _name(certificate.get("issuer"))))
            rows.append(("certificate valid from", str(certificate.get("notBefore", "-"))))
            rows.append(("certificate expires", str(certificate.get("notAfter", "-"))))
            names = [value for kind, value in certificate.get("subjectAltName", ())]
            if names:
                rows.append(("certificate names", ", ".join(names)))
    return rows


def run_serverinfo(args: argparse.Namespace) -> int:
    """Print what the server says; exit 0, or with the status of the failure."""
    settings = resolve_settings(args, args.sender, secrets=False)
    try:
        with transcript_to(args.transcript):
            rows = trio.run(_collect, settings)
    except Exception as exc:
        raise CLIError(*exit_status(exc, settings.hints)) from exc
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return EX_OK
