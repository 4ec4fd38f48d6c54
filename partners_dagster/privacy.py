"""Showing personal data and secrets safely: masked emails in metadata, masked URL passwords
in every message. Plain functions, imported by every layer that shows a value to a person."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_TLD = re.compile(r"[A-Za-z]{2,6}")
# A URL token: scheme://anything up to white space or a quote.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]+)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# redis-py also reads a password from the query string (redis://host/0?password=...).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#\s'\"]*", re.IGNORECASE)
_QUERY_PASSWORD_VALUE = re.compile(r"[?&]password=([^&#\s'\"]*)", re.IGNORECASE)
# The shortest piece of a password that scrub_secrets hides wherever it appears.
MIN_FRAGMENT = 4


def mask_email(text: str | None) -> str | None:
    """``jo.smith@school.org`` -> ``j***@s***.org``: enough to recognise, not to contact.

    The whole value is masked, whatever its shape: a list of addresses keeps none of them
    (``a@x.org,b@y.org`` -> ``a***@y***.org``), an address without a domain keeps only its
    first character (``00@`` -> ``0***@***``), and a long local part shows one character.
    A value without ``@`` is shown only when it is a UUID (a user id, not personal data).
    """
    if text is None:
        return None
    value = str(text).strip()
    if "@" not in value:
        if _UUID.fullmatch(value):
            return value
        return f"{value[:1]}***" if value else value
    local, _, domain = value.rpartition("@")
    tld = domain.rsplit(".", 1)[-1] if "." in domain else ""
    shown_tld = f".{tld}" if _TLD.fullmatch(tld) else ""
    return f"{local[:1]}***@{domain[:1]}***{shown_tld}" if domain else f"{local[:1]}***@***"


def _credentials(url: str) -> tuple[str, str, str | None, str] | None:
    """``(scheme://, user, password, after)`` of a URL with a user part, else None.

    The user part ends at the LAST ``@`` of the URL, not at the first ``/ ? #``: a password
    that is not percent-encoded may hold any of ``@ : / % # ?`` and spaces, and a mask that
    stopped early would show the rest of it (``redis://:Super@Secret:Pw9/x@host``). A path
    holding ``@`` is masked up to it too: more hidden, never less. The password starts after
    the first ``:`` of the user part; a user part without ``:`` is a user name only."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    rest = url[scheme.end() :]
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return None
    user, colon, password = userinfo.partition(":")
    return scheme.group(0), user, (password if colon else None), after


def url_password(url: str) -> str | None:
    """The password of ``url`` as written (see ``_credentials``), or None."""
    parts = _credentials(url)
    return parts[2] if parts else None


def mask_url(url: str) -> str:
    """``url`` (one whole URL, spaces and all) with its password, and any ``password=`` query
    parameter, replaced by ``***``; the user name, host, port and path stay readable.

    The one masker: every message, log line, metadata entry, ``repr`` and alert that shows a
    database, cache, Redis or API URL passes it through here (or ``mask_url_passwords``)."""
    parts = _credentials(url)
    if parts is not None and parts[2] is not None:
        scheme, user, _password, after = parts
        url = f"{scheme}{user}:***@{after}"
    return _QUERY_PASSWORD.sub(r"\g<key>***", url)


def mask_url_passwords(text: str) -> str:
    """Every ``scheme://user:password@host`` in free ``text`` with the password replaced by
    ``***`` (database, cache and Redis URLs alike; ``redis://:password@host`` too). In free
    text a URL ends at white space or a quote: a password with a space is only masked whole
    by ``scrub_secrets``, which knows the URL."""
    return _URL.sub(lambda match: mask_url(match.group(0)), text)


def url_secrets(url: str | None) -> list[str]:
    """The passwords in ``url``: its user part's and any ``password=`` query parameter's, as
    written, percent-decoded and percent-encoded (as a library may quote them)."""
    if not url:
        return []
    found = [url_password(url), *_QUERY_PASSWORD_VALUE.findall(url)]
    return sorted(
        {v for p in found if p for v in (p, unquote(p), quote(p, safe=""), quote(p, safe="%"))},
        key=len,
        reverse=True,
    )


def _hide_runs(text: str, secret: str) -> str:
    """``text`` with every run of at least ``MIN_FRAGMENT`` characters that also occurs in
    ``secret`` replaced by ``***``. A library that misread a URL
    quotes a piece of its password, cut anywhere ("Port could not be cast to integer value
    as 'Pw9/x'"): any piece that long is hidden; a shorter one tells little."""
    if len(secret) < 2:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[i : j + 1] in secret:
            j += 1
        if j - i >= MIN_FRAGMENT:
            out.append("***")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def scrub_secrets(text: str, *urls: str | None) -> str:
    """``text`` with the passwords of ``urls`` hidden, and any piece of them (``_hide_runs``),
    then every URL in it masked (``mask_url_passwords``). For messages that quote what a
    library said about a URL we gave it."""
    secrets = sorted({s for url in urls for s in url_secrets(url) if len(s) >= 2}, key=len)
    for secret in reversed(secrets):  # whole ones first, longest first
        text = text.replace(secret, "***")
    for secret in reversed(secrets):
        text = _hide_runs(text, secret)
    return mask_url_passwords(text)


def scrub_exception(error: BaseException, *urls: str | None) -> BaseException:
    """``error`` with its message scrubbed (``scrub_secrets``) and its chain dropped: the
    exception it was raised from, or while handling, may quote the URL in clear and would be
    shown with it in tracebacks, the run's event log and Sentry. Returns ``error``."""
    error.args = tuple(
        scrub_secrets(arg, *urls) if isinstance(arg, str) else arg for arg in error.args
    )
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


def unreadable_url_reason(url: str) -> str | None:
    """Why the URL parsers that libraries use (``urllib.parse``, redis-py, requests) would
    read ``url``'s password differently from how it is written, or None when they read it
    right. They end the user part at the first ``/ ? #``, so such a password must be
    percent-encoded; the reason names the characters, never the password."""
    password = url_password(url)
    if password is None:
        return None
    try:
        theirs = urlsplit(url).password
    except ValueError:
        theirs = None
    if theirs == password:
        return None
    odd = sorted({c for c in password if c in "/?#[]\t\r\n"})
    shown = " ".join(repr(c) for c in odd) or "a character"
    return (
        f"its password holds {shown}, which must be percent-encoded "
        "(/ as %2F, ? as %3F, # as %23, % as %25, @ as %40)"
    )
