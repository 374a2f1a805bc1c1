"""The public surface is pinned: a change to it must be deliberate."""

from __future__ import annotations

import inspect
from typing import Any

import trio_sendmail as ts

PUBLIC = {
    "BulkMessage", "BulkProgress", "BulkResult", "BulkSummary", "Lease", "Pool",
    "OutcomeTracker",
    "PoolLimits", "PoolStatistics", "open_pool", "send_bulk",
    "Authentication", "Capabilities", "DSN", "DSNNotify", "DSNReturn",
    "ConnectionOptions", "ConnectionSettings",
    "Domain", "DomainKind", "EnhancedStatus",
    "ForwardPath", "Mailbox", "OAuth2Token", "Outcome", "Reply", "ReversePath", "SMTPAddressError",
    "SMTPAuthenticationError", "SMTPConnectionError", "SMTPError", "SMTPInputError",
    "SMTPMessageTooLarge", "SMTPNotSupportedError", "SMTPPartialDelivery", "SMTPPermanentError",
    "SMTPProtocolError",
    "SMTPRecipientsRefused", "SMTPResponseError", "SMTPSenderRefused", "SMTPServiceClosing",
    "SMTPTLSError", "SMTPTimeoutError", "SMTPTransientError", "SMTPUsageError", "SendResult",
    "Session",
    "SessionStatistics", "TLSMode", "Timeouts", "open_session", "sendmail",
    "sendmail_with_starttls",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(ts.__all__) == PUBLIC
    for name in ts.__all__:
        assert getattr(ts, name).__module__.startswith("trio_sendmail")


def test_every_public_name_is_documented() -> None:
    for name in ts.__all__:
        assert inspect.getdoc(getattr(ts, name)), name


def test_sendmail_signatures_are_keyword_only() -> None:
    for function, port in ((ts.sendmail, 465), (ts.sendmail_with_starttls, 587)):
        params = inspect.signature(function).parameters
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
        assert list(params)[:4] == ["hostname", "sender", "recipients", "mail"]
        assert params["port"].default == port
        for name in ("domain", "ssl_context", "authentication", "timeouts"):
            assert name in params
    for opener in (ts.open_session, ts.open_pool):
        params = inspect.signature(opener).parameters
        kinds = [p.kind for p in params.values()]
        assert kinds[0] is inspect.Parameter.POSITIONAL_ONLY  # the server
        assert all(k is inspect.Parameter.KEYWORD_ONLY for k in kinds[1:-1])
        assert kinds[-1] is inspect.Parameter.VAR_KEYWORD  # **options


def test_error_hierarchy() -> None:
    for name in ts.__all__:
        obj = getattr(ts, name)
        if name.startswith("SMTP"):
            assert issubclass(obj, ts.SMTPError)
    assert issubclass(ts.SMTPTLSError, ts.SMTPConnectionError)
    assert issubclass(ts.SMTPAddressError, ValueError)
    assert issubclass(ts.SMTPTimeoutError, TimeoutError)
    assert issubclass(ts.SMTPMessageTooLarge, ts.SMTPNotSupportedError)
    # The caller's mistakes are not the server's (h11's Local/RemoteProtocolError).
    assert issubclass(ts.SMTPUsageError, RuntimeError)
    assert not issubclass(ts.SMTPUsageError, ts.SMTPProtocolError | ts.SMTPInputError)
    for cls in (ts.SMTPSenderRefused, ts.SMTPAuthenticationError, ts.SMTPServiceClosing,
                ts.SMTPResponseError, ts.SMTPRecipientsRefused):  # fmt: skip
        assert issubclass(cls.Transient, cls) and issubclass(cls.Permanent, cls)
        assert issubclass(cls.Transient, ts.SMTPTransientError)
        assert issubclass(cls.Permanent, ts.SMTPPermanentError)
        assert cls.Transient.__name__ == cls.__name__ + "Transient"
        assert cls.Permanent.__name__ == cls.__name__ + "Permanent"
    for cls in (ts.SMTPSenderRefused, ts.SMTPAuthenticationError, ts.SMTPServiceClosing):
        assert issubclass(cls, ts.SMTPResponseError)
        # Each class has flavours of its own: not the ones of its base.
        assert cls.Transient is not ts.SMTPResponseError.Transient


def test_response_error_flavour_follows_the_code() -> None:
    reply = ts.Reply(451, ("try later",), ts.EnhancedStatus(4, 3, 0))
    err = ts.SMTPSenderRefused.from_reply(reply, "MAIL")
    assert isinstance(err, ts.SMTPSenderRefused) and isinstance(err, ts.SMTPTransientError)
    assert (err.code, err.enhanced_status, err.lines, err.command) == (
        451,
        ts.EnhancedStatus(4, 3, 0),
        ("try later",),
        "MAIL",
    )
    assert err.is_transient
    assert str(err) == "MAIL refused: 451 4.3.0 try later"
    perm = ts.SMTPResponseError.from_reply(ts.Reply(554, ("no",)), "DATA")
    assert isinstance(perm, ts.SMTPPermanentError) and not perm.is_transient


def _annotations(obj: object) -> dict[str, str]:
    """The annotations of a public function, or of a class's fields and public
    methods and properties, as written (strings: every module uses PEP 563)."""
    found: dict[str, str] = {}
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            if not klass.__module__.startswith("trio_sendmail"):
                continue
            for name, note in vars(klass).get("__annotations__", {}).items():
                found[f"{klass.__name__}.{name}"] = str(note)
            for name, member in vars(klass).items():
                if name.startswith("_") and name != "__init__":
                    continue
                target = member.fget if isinstance(member, property) else member
                target = getattr(target, "__func__", target)
                for arg, note in getattr(target, "__annotations__", {}).items():
                    found[f"{klass.__name__}.{name}({arg})"] = str(note)
    elif callable(obj):
        for arg, note in getattr(obj, "__annotations__", {}).items():
            found[f"{getattr(obj, '__name__', obj)}({arg})"] = str(note)
    return found


def test_the_public_api_is_typed_without_any() -> None:
    import re

    import trio_sendmail.testing

    modules = [ts, trio_sendmail.testing]
    for extra in ("trio_sendmail.proxy", "trio_sendmail.blocking", "trio_sendmail.outbox"):
        try:
            modules.append(__import__(extra, fromlist=["__all__"]))
        except ImportError:  # an optional module not installed (its extra is missing)
            continue
    seen = {
        f"{module.__name__}.{where}": note
        for module in modules
        for name in module.__all__
        for where, note in _annotations(getattr(module, name)).items()
    }
    assert len(seen) > 300  # the walk reaches the signatures (it cannot pass empty)
    untyped = {where: note for where, note in seen.items() if re.search(r"\bAny\b", note)}
    assert untyped == {}


def test_the_walk_finds_any() -> None:
    def leaky(value: Any, *, other: int) -> Any: ...  # the case under test

    assert _annotations(leaky) == {
        "leaky(value)": "Any", "leaky(other)": "int", "leaky(return)": "Any"
    }  # fmt: skip
