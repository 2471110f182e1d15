"""Credentials written into URIs, masked wherever a URI is shown, logged or recorded.

pyarrow (and so ``--storage``/``--init``/``--data``) accepts ``s3://KEY:SECRET@bucket/path`` and
``?access_key=...&secret_key=...&session_token=...`` (``?access_token=`` for ``gs://``). :func:`mask`
is the one place that hides them: every URI a user, a log, a run record or W&B sees goes through it.
"""

from __future__ import annotations

import os
import re

MASK = "***"
#: query parameters pyarrow's S3/GCS filesystems read credentials from
SECRET_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token", "access_token"})
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?:" + "|".join(sorted(SECRET_QUERY_KEYS)) + r")=)(?P<value>[^&#\s]*)")


def mask(text: str | os.PathLike[str]) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***`` (``s3://***@bucket/p``,
    ``?secret_key=***``); anything else, plain paths included, unchanged."""
    s = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", os.fspath(text))
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", s)


def has_credentials(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` holds a URI with credentials in it (or their mask)."""
    return mask(text) != os.fspath(text) or f"://{MASK}@" in os.fspath(text)
