"""trio_sendmail: submit email to real mail servers from trio programs.

* :func:`sendmail`: implicit TLS (RFC 8314), port 465.
* :func:`sendmail_with_starttls`: STARTTLS (RFC 3207), port 587.
* :func:`open_session`: many messages over one connection, to a server given
  by its host name and keyword arguments or by a :class:`ConnectionSettings`.
* :func:`open_pool` and :func:`send_bulk`: concurrent sending over many connections.
* :mod:`trio_sendmail.proxy`: SOCKS5 and HTTP CONNECT proxies, for ``connect=``.
* :mod:`trio_sendmail.blocking`: the same from threads, without async code.

See :mod:`trio_sendmail.testing` for a fake server to use in tests.
"""

from __future__ import annotations

import logging

from ._address import Domain, DomainKind, ForwardPath, Mailbox, ReversePath
from ._api import sendmail, sendmail_with_starttls
from ._bulk import BulkMessage, BulkProgress, BulkResult, BulkSummary, send_bulk
from ._capabilities import Capabilities
from ._dsn import DSN, DSNNotify, DSNReturn
from ._errors import (
    Outcome,
    SMTPAddressError,
    SMTPConnectionError,
    SMTPError,
    SMTPInputError,
    SMTPMessageTooLarge,
    SMTPNotSupportedError,
    SMTPPermanentError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPTransientError,
    SMTPUsageError,
)
from ._lease import Lease
from ._pool import Pool, PoolLimits, PoolStatistics, open_pool
from ._reply import EnhancedStatus, Reply
from ._reply_errors import (
    SMTPAuthenticationError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
    SMTPServiceClosing,
)
from ._sasl import Authentication, OAuth2Token
from ._session import (
    SendResult,
    Session,
    SessionStatistics,
    Timeouts,
    TLSMode,
    open_session,
)
from ._settings import ConnectionOptions, ConnectionSettings
from ._transaction import OutcomeTracker, SMTPPartialDelivery

__version__ = "0.1.0"

# The library's loggers (``trio_sendmail.*``, see docs/logging.rst) stay
# silent until the application configures logging (no "last resort" output).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DSN",
    "Authentication",
    "BulkMessage",
    "BulkProgress",
    "BulkResult",
    "BulkSummary",
    "Capabilities",
    "ConnectionOptions",
    "ConnectionSettings",
    "DSNNotify",
    "DSNReturn",
    "Domain",
    "DomainKind",
    "EnhancedStatus",
    "ForwardPath",
    "Lease",
    "Mailbox",
    "OAuth2Token",
    "Outcome",
    "OutcomeTracker",
    "Pool",
    "PoolLimits",
    "PoolStatistics",
    "Reply",
    "ReversePath",
    "SMTPAddressError",
    "SMTPAuthenticationError",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPInputError",
    "SMTPMessageTooLarge",
    "SMTPNotSupportedError",
    "SMTPPartialDelivery",
    "SMTPPermanentError",
    "SMTPProtocolError",
    "SMTPRecipientsRefused",
    "SMTPResponseError",
    "SMTPSenderRefused",
    "SMTPServiceClosing",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "SMTPTransientError",
    "SMTPUsageError",
    "SendResult",
    "Session",
    "SessionStatistics",
    "TLSMode",
    "Timeouts",
    "open_pool",
    "open_session",
    "send_bulk",
    "sendmail",
    "sendmail_with_starttls",
]
