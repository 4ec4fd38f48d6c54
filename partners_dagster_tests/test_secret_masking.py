"""A password inside a URL (FL_PARTNERS_URL, FL_PARTNERS_CACHE, TEACHCOMPUTING_SIDEKIQ_REDIS_URL,
TEACHCOMPUTING_DATABASE_URL) shows nowhere: not in error messages, tracebacks, the run's event
log, stderr, metadata, Sentry events or ``repr``. One masker (``partners_dagster.privacy``) on
every path, tested with generated passwords that hold ``@ : / % # ?`` and spaces, which an
operator may not have percent-encoded."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
from dagster_shared.serdes import serialize_value
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from partners_dagster.definitions import build_definitions
from partners_dagster.defs import alerts
from partners_dagster.partners_api import PartnersApiClient, PartnersApiError
from partners_dagster.partners_api.client import make_cache_backend
from partners_dagster.partners_api.resource import PartnersApiResource
from partners_dagster.privacy import mask_url, mask_url_passwords, scrub_secrets
from partners_dagster.settings import ConfigurationError
from partners_dagster.sidekiq.resource import SidekiqResource
from partners_dagster.teachcomputing.engine import make_engine
from partners_dagster.teachcomputing.migrate import upgrade
from partners_dagster.teachcomputing.resource import TeachComputingDatabaseResource
from partners_dagster.teachcomputing.schema import create_teachcomputing_tables

from .redis_server import free_port
from .test_alerts import (  # noqa: F401
    _message,
    _sentry_events,
    recorder,
    run_failure_context,
    sentry_dsn,
)

DELIMITERS = "@:/%#? "
# Characters that URL parsers end a user part at: a password holding one cannot be read.
MISREAD = "/?#"
PIECE = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
WINDOW = 6  # the length of password piece the tests look for (the masker hides 4 and up)


@st.composite
def passwords(draw, delimiters: str = DELIMITERS, must_hold: str = "") -> str:
    """A password of 8+ characters made of pieces joined by URL delimiters (at least one),
    holding at least one of ``must_hold`` when given."""
    pieces = draw(st.lists(PIECE, min_size=2, max_size=5))
    joins = draw(
        st.lists(st.sampled_from(delimiters), min_size=len(pieces) - 1, max_size=len(pieces) - 1)
    )
    if must_hold:
        joins[draw(st.integers(0, len(joins) - 1))] = draw(st.sampled_from(must_hold))
    password = pieces[0] + "".join(j + p for j, p in zip(joins, pieces[1:], strict=True))
    assume(len(password) >= 8 and password.strip() == password)
    return password


def leaks(text: str, password: str) -> list[str]:
    """The password, or any piece of it of ``WINDOW`` characters, found in ``text``. A piece
    counts when it holds a digit and an upper-case letter among three different characters:
    "000000" is in timestamps, and "timeou" or "/clien" in field names and paths."""
    found = [password] if password in text else []
    for start in range(len(password) - WINDOW + 1):
        window = password[start : start + WINDOW]
        if (
            len(set(window)) >= 3
            and any(c.isdigit() for c in window)
            and any(c.isupper() for c in window)
            and window in text
        ):
            found.append(window)
    return found


def shown(error: BaseException) -> str:
    """The messages a traceback of ``error`` shows, its whole chain included (not the source
    lines: a window of the password may be a word of the code, e.g. "timeou")."""
    messages = []
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return "\n".join(messages)


# -- the masker ---------------------------------------------------------------------------------


@settings(deadline=None)  # no timing in tests: a loaded machine is slow
@given(
    scheme=st.sampled_from(["redis", "rediss", "postgresql+psycopg2", "https"]),
    user=st.sampled_from(["", "default", "partners"]),
    password=passwords(),
)
@example(scheme="redis", user="", password="Super@Secret:Pw9/x")
def test_mask_url_hides_all_of_a_password_whatever_it_holds(scheme, user, password):
    url = f"{scheme}://{user}:{password}@cache.example.org:6380/0"
    expected = f"{scheme}://{user}:***@cache.example.org:6380/0"
    assert mask_url(url) == expected
    if " " not in password:  # in free text a URL ends at white space
        assert mask_url_passwords(f"cannot reach '{url}' (timeout)") == (
            f"cannot reach '{expected}' (timeout)"
        )
    # redis-py also reads a (percent-encoded) password from the query string.
    assert mask_url(f"{url}?password={quote(password, safe='')}").endswith("?password=***")


def test_mask_url_leaves_a_url_without_password_alone():
    for url in (
        "redis://cache.example.org:6379/0",
        "redis://default@cache.example.org/0",
        "sqlite:////tmp/tc.sqlite3",
        "https://partners.example.org",
    ):
        assert mask_url(url) == url


@settings(deadline=None)  # no timing in tests: a loaded machine is slow
@given(password=passwords(), data=st.data())
def test_scrub_secrets_hides_any_piece_a_library_quotes(password, data):
    url = f"redis://:{password}@cache.example.org:6379/0"
    start = data.draw(st.integers(0, len(password) - 4))
    piece = password[start : data.draw(st.integers(start + 4, len(password)))]
    scrubbed = scrub_secrets(f"Port could not be cast to integer value as {piece!r}", url)
    assert piece not in scrubbed and password not in scrubbed


# -- TEACHCOMPUTING_SIDEKIQ_REDIS_URL --------------------------------------------------------------


@settings(deadline=None)  # no timing in tests: a loaded machine is slow
@given(password=passwords(must_hold=MISREAD))
@example(password="Super@Secret:Pw9/x")
def test_a_sidekiq_redis_url_redis_py_misreads_is_an_error_naming_the_variable(password):
    resource = SidekiqResource(redis_url=f"redis://:{password}@127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError) as raised:
        resource.client()
    assert "TEACHCOMPUTING_SIDEKIQ_REDIS_URL" in str(raised.value)
    assert "percent-encoded" in str(raised.value)
    assert leaks(shown(raised.value), password) == []
    assert leaks(repr(resource) + str(resource), password) == []


# -- FL_PARTNERS_CACHE ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(password=passwords())
@example(password="Super@Secret:Pw9/x")
def test_a_partners_cache_redis_url_that_fails_names_the_variable_and_hides_the_password(
    password,
):
    # Misread (a / ? or # in it) or read right but nothing listening: either way an error.
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigurationError) as raised:
        make_cache_backend(url)
    assert str(raised.value).startswith("FL_PARTNERS_CACHE")
    assert leaks(shown(raised.value), password) == []


# -- FL_PARTNERS_URL -----------------------------------------------------------------------------


def _api_resource(base_url: str, cache: str = "") -> PartnersApiResource:
    return PartnersApiResource(
        base_url=base_url,
        consumer_key="key",
        consumer_secret="the-consumer-secret",
        cache=cache,
        max_attempts=2,
        backoff_initial_seconds=0.01,
        request_deadline_seconds=10,
    )


@settings(max_examples=30, deadline=None)
@given(password=passwords(delimiters="@:% "))
def test_a_password_in_fl_partners_url_never_shows_when_the_api_is_unreachable(password):
    base_url = f"http://partners:{password}@127.0.0.1:{free_port()}"
    client = PartnersApiClient(
        base_url, "key", "the-consumer-secret", max_attempts=2, backoff_initial=0.01
    )
    try:
        # Connection refused; or requests cannot even encode the password (a %80 in it).
        with pytest.raises(PartnersApiError) as raised:
            client.course_runs()
        assert "partners:***@127.0.0.1" in str(raised.value)
        assert leaks(shown(raised.value), password) == []
        assert leaks(repr(client), password) == []
        resource = _api_resource(base_url, cache=f"redis://:{password}@127.0.0.1:1/0")
        assert leaks(repr(resource) + str(resource), password) == []
    finally:
        client.close()


@settings(deadline=None)  # no timing in tests: a loaded machine is slow
@given(password=passwords(must_hold=MISREAD))
def test_a_fl_partners_url_whose_password_a_parser_misreads_is_an_error_naming_it(password):
    with pytest.raises(ConfigurationError) as raised:
        PartnersApiClient(f"https://partners:{password}@api.example.org", "key", "secret")
    assert str(raised.value).startswith("FL_PARTNERS_URL")
    assert leaks(shown(raised.value), password) == []


@settings(deadline=None)  # no timing in tests: a loaded machine is slow
@given(password=passwords())
def test_the_database_resource_repr_hides_the_password(password):
    resource = TeachComputingDatabaseResource(
        database_url=f"postgresql+psycopg2://tc:{password}@db.example.org/tc"
    )
    assert leaks(repr(resource) + str(resource), password) == []


# -- a whole night, as an operator sees it --------------------------------------------------------


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(password=passwords(delimiters="@:% "))
def test_a_failed_night_shows_the_fl_partners_url_password_nowhere(
    password,
    sentry_dsn,  # noqa: F811 (the fixture imported from test_alerts)
    recorder,  # noqa: F811
    capfd,
):
    """The API unreachable, a password in FL_PARTNERS_URL: the run fails, and neither its
    event log (messages, metadata, errors), nor stderr, nor the Sentry event shows it."""
    recorder.received.clear()
    capfd.readouterr()
    with tempfile.TemporaryDirectory() as workdir:
        database_url = f"sqlite:///{Path(workdir) / 'tc.sqlite3'}"
        engine = make_engine(database_url)
        create_teachcomputing_tables(engine)
        upgrade(engine)
        engine.dispose()
        defs = build_definitions(
            {
                "partners_api": _api_resource(
                    f"http://partners:{password}@127.0.0.1:{free_port()}"
                ),
                "teachcomputing_db": TeachComputingDatabaseResource(database_url=database_url),
                "sidekiq": SidekiqResource(),
            }
        )
        with dg.instance_for_test(temp_dir=workdir) as instance:
            result = defs.resolve_job_def("update_memberships_job").execute_in_process(
                instance=instance, raise_on_error=False
            )
            assert not result.success
            records = instance.all_logs(result.run_id)
            event_log = "\n".join(serialize_value(record) for record in records)
            alerts.sentry_on_run_failure(run_failure_context(instance, result))
    (event,) = _sentry_events(recorder, 1)
    assert "ApiUnavailableError" in event_log and "partners:***@127.0.0.1" in event_log
    assert "course_runs" in _message(event)
    assert leaks(event_log, password) == []
    captured = capfd.readouterr()
    assert leaks(captured.out + captured.err, password) == []
    sent = b"".join(body for _, _, body in recorder.received).decode("utf-8", "replace")
    assert leaks(sent, password) == []
