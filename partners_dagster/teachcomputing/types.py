"""Column types that behave the same on PostgreSQL and SQLite.

The website's tables have Rails's PostgreSQL types (docs/database.md): native
``uuid``, ``text[]``, ``json`` and ``timestamp(6) without time zone`` holding UTC. On
SQLite a UUID is 36-character lowercase text with dashes, ``text[]`` is a JSON array in
text, and timestamps are UTC text. In Python every UUID is a canonical lowercase string
and every timestamp is timezone-aware UTC, whichever database it came from.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import TypeDecorator

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class UUIDText(TypeDecorator):
    """A UUID as a canonical lowercase string: native ``uuid`` on PostgreSQL, CHAR-like text elsewhere."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, str) and _CANONICAL.fullmatch(value):
            return value  # the common case, checked ten times faster than parsing it
        # Canonicalise (accepts upper case, braces, no dashes); rejects non-UUIDs loudly.
        return str(uuid.UUID(str(value)))

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        text = str(value)
        # Someone else may have written upper case or braces on SQLite: one membership or
        # course must never look like two.
        return text if _CANONICAL.fullmatch(text) else canonical_uuid_text(text)


def canonical_uuid_text(text: str) -> str:
    """``text`` as a canonical lowercase UUID when it is one, else unchanged (stripped)."""
    stripped = text.strip()
    if _CANONICAL.fullmatch(stripped):
        return stripped
    try:
        return str(uuid.UUID(stripped))
    except ValueError:
        return stripped


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out. Naive datetimes are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text, e.g. from a server default
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RailsTimestamp(TypeDecorator):
    """Rails's ``timestamp(6) without time zone`` holding UTC: aware UTC in Python, naive UTC
    in the database (microseconds kept). Naive datetimes are refused rather than guessed."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=False, precision=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TextArray(TypeDecorator):
    """Rails's ``text[]``: a PostgreSQL array of text; on SQLite, a JSON array in text."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(Text))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        values = [str(v) for v in value]
        return values if dialect.name == "postgresql" else json.dumps(values)

    def process_result_value(self, value, dialect):
        if value is None:
            return []
        if isinstance(value, str):
            value = json.loads(value)
        return [str(v) for v in value]


class EmptyTextArray(ColumnElement):
    """The server default of an empty ``text[]``, in each database's own spelling:
    PostgreSQL's array literal ``'{}'``; on SQLite the empty JSON array ``'[]'``. SQLite
    has no arrays, and ``'{}'`` there is a JSON object: ``json_insert('{}', '$[#]', x)``
    returns ``'{}'``, so a link appended to such a row would be lost."""

    inherit_cache = True


@compiles(EmptyTextArray)
def _empty_array_json(element, compiler, **kw):
    return "'[]'"


@compiles(EmptyTextArray, "postgresql")
def _empty_array_postgres(element, compiler, **kw):
    return "'{}'"


# Rails's ``json`` (not jsonb) on PostgreSQL; JSON text on SQLite.
JSONDocument = JSON()

# An autoincrementing 64-bit key on PostgreSQL; SQLite only autoincrements INTEGER.
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")
