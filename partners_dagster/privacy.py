"""Showing personal data and secrets safely: masked emails in metadata, masked URL passwords
in every message. Plain functions, imported by every layer that shows a value to a person."""

from __future__ import annotations

import re

_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_TLD = re.compile(r"[A-Za-z]{2,6}")
# A URL token: scheme://anything up to white space or a quote.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]+)")


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


def mask_url_passwords(text: str) -> str:
    """Every ``scheme://user:password@host`` in ``text`` with the password replaced by ``***``
    (database, cache and Redis URLs alike; ``redis://:password@host`` too)."""

    def mask(match: re.Match) -> str:
        rest = match.group("rest")
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return match.group(0)
        user = userinfo.split(":", 1)[0]
        return f"{match.group('scheme')}{user}:***@{host}"

    return _URL.sub(mask, text)
