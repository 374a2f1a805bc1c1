"""trio_sendmail's entry points with the tests' EHLO name as their default ``domain``.

Every test that opens a connection says who it is the same way, so it says it
here once: ``defaults.open_session(HOST, tls=..., stream=...)`` is
``ts.open_session(..., domain=CLIENT_NAME)``, and a test that is about the EHLO
name still passes its own ``domain=``.
"""

from __future__ import annotations

from functools import partial

import trio_sendmail as ts

from .helpers import CLIENT_NAME

open_session = partial(ts.open_session, domain=CLIENT_NAME)
open_pool = partial(ts.open_pool, domain=CLIENT_NAME)
sendmail = partial(ts.sendmail, domain=CLIENT_NAME)
sendmail_with_starttls = partial(ts.sendmail_with_starttls, domain=CLIENT_NAME)
send_bulk = partial(ts.send_bulk, domain=CLIENT_NAME)
ConnectionSettings = partial(ts.ConnectionSettings, domain=CLIENT_NAME)
