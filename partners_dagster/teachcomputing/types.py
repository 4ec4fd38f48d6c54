"""Column types that behave the same on PostgreSQL and SQLite.

SQLAlchemy's generic ``Uuid`` stores 32 hex digits on SQLite; the Teach Computing
website expects 36-character lowercase text with dashes there, and native ``uuid``
on PostgreSQL. Timestamps are stored and returned as timezone-aware UTC on both.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String
from sqlalchemy.dialects import postgresql
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
        return None if value is None else str(value)


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


JSONDocument = JSON().with_variant(postgresql.JSONB(), "postgresql")

# An autoincrementing 64-bit key on PostgreSQL; SQLite only autoincrements INTEGER.
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")
