"""The ``partners-dagster`` command line."""

from __future__ import annotations

import click

SCALES = ["tiny", "small", "medium", "large"]
scale_option = click.option(
    "--scale", default="small", show_default=True, type=click.Choice(SCALES)
)
seed_option = click.option("--seed", default=1, show_default=True, type=int, help="Dataset seed.")


@click.group()
def main() -> None:
    """partners_dagster: sync the FutureLearn Partners API into the Teach Computing database."""


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on."
)
@click.option("--port", default=8765, show_default=True, type=int, help="0 picks a free port.")
@scale_option
@seed_option
@click.option("--consumer-key", envvar="FL_PARTNERS_CONSUMER_KEY", default=None)
@click.option("--consumer-secret", envvar="FL_PARTNERS_CONSUMER_SECRET", default=None)
@click.option("--latency-ms", default=0.0, type=float, help="Added latency per request.")
@click.option("--error-rate", default=0.0, type=float, help="Share of requests answered 500.")
@click.option(
    "--rate-limit-rate", default=0.0, type=float, help="Share answered 429 with Retry-After."
)
@click.option("--drop-rate", default=0.0, type=float, help="Share whose connection is dropped.")
@click.option(
    "--token-reject-rate", default=0.0, type=float, help="Share of valid tokens refused (401)."
)
@click.option(
    "--control-token",
    envvar="PARTNERS_SANDBOX_CONTROL_TOKEN",
    default=None,
    help="Token for the /_sandbox control endpoints (default: a random one, printed).",
)
def sandbox(
    host,
    port,
    scale,
    seed,
    consumer_key,
    consumer_secret,
    latency_ms,
    error_rate,
    rate_limit_rate,
    drop_rate,
    token_reject_rate,
    control_token,
) -> None:
    """Serve a local Partners API sandbox with generated data."""
    import time

    from .. import sandbox as sandbox_api
    from ..sandbox.server import loopback_family

    try:  # the server's own check, before the dataset is generated
        loopback_family(host)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--host") from None
    started = time.perf_counter()
    dataset = sandbox_api.generate(scale, seed)
    click.echo(
        f"generated {scale} dataset (seed {seed}) in {time.perf_counter() - started:.2f}s: "
        f"{len(dataset.runs)} runs, {len(dataset.enrolments)} enrolments, {len(dataset.memberships)} memberships"
    )
    faults = sandbox_api.Faults(
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        drop_rate=drop_rate,
        token_reject_rate=token_reject_rate,
    )
    api = sandbox_api.SandboxApi(
        dataset,
        consumer_key=consumer_key or sandbox_api.DEFAULT_CONSUMER_KEY,
        consumer_secret=consumer_secret or sandbox_api.DEFAULT_CONSUMER_SECRET,
        faults=faults,
        control_token=control_token,
    )
    server = sandbox_api.SandboxServer(api, host, port).start()
    if not control_token:
        click.echo(f"PARTNERS_SANDBOX_CONTROL_TOKEN={server.control_token}")
    click.echo(f"FL_PARTNERS_URL={server.url}")
    click.echo(
        f"FL_PARTNERS_CONSUMER_KEY={api.consumer_key}  (secret: the configured or sandbox default)"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


@main.command()
@scale_option
@seed_option
def demo(scale: str, seed: int) -> None:
    """Run both nightly jobs end to end on the embedded defaults (sandbox API, SQLite)."""
    from .demo import run_demo

    raise SystemExit(run_demo(scale, seed, say=click.echo))


@main.command()
@scale_option
@seed_option
@click.option("--port", default=3000, show_default=True, type=int)
def ui(scale: str, seed: int, port: int) -> None:
    """The demo's setup and runs, then the Dagster UI (dagster dev) on them."""
    from .demo import run_ui

    raise SystemExit(run_ui(scale, seed, port, say=click.echo))


@main.command()
@click.argument("user")
@click.option("--show-emails", is_flag=True, help="Show email addresses unmasked.")
@click.option("--database-url", envvar="TEACHCOMPUTING_DATABASE_URL", default=None)
def audit(user: str, show_emails: bool, database_url: str | None) -> None:
    """Who changed USER's record, and why: links and achievement transitions with run ids."""
    from .. import settings
    from ..teachcomputing.engine import make_engine
    from .audit import UnknownUserError, audit_user, format_audit

    try:
        found = audit_user(make_engine(database_url or settings.database_url()), user)
    except UnknownUserError as error:
        raise click.ClickException(str(error)) from None
    click.echo(format_audit(found, show_emails=show_emails))


database_url_option = click.option(
    "--database-url",
    envvar="TEACHCOMPUTING_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL (default: TEACHCOMPUTING_DATABASE_URL, else SQLite under PARTNERS_DAGSTER_DATA).",
)


def _repository(database_url: str | None):
    from .. import settings
    from ..settings import ConfigurationError
    from ..teachcomputing.engine import make_engine
    from ..teachcomputing.repository import TeachComputingRepository

    try:
        return TeachComputingRepository(make_engine(database_url or settings.database_url()))
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option(
    "--courses",
    default="",
    help="Comma-separated FutureLearn course UUIDs: plan only these courses.",
)
@click.option(
    "--users", default="", help="Comma-separated user ids or emails: plan only these users."
)
@click.option(
    "--refetch", is_flag=True, help="Ask the API again instead of using the response cache."
)
@click.option(
    "--accept-report-sizes",
    default="",
    help="Comma-separated run UUIDs whose shrunk report is to be read as whole.",
)
@click.option(
    "--out",
    "out_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the plan here (default: standard output).",
)
@database_url_option
def preview(
    courses: str,
    users: str,
    refetch: bool,
    accept_report_sizes: str,
    out_file: str | None,
    database_url: str | None,
) -> None:
    """What tonight would change, writing nothing: both steps' plans, one change a line as
    JSON (docs/operator-controls.md). Progress and a summary go to standard error."""
    import sys
    from datetime import UTC, datetime

    from .. import settings
    from ..steps.night_preview import preview_night
    from ..steps.run_scope import ScopeError

    def say(line: str) -> None:
        click.echo(line, err=True)

    def listed(text: str) -> list[str]:
        return [value.strip() for value in text.split(",") if value.strip()]

    repository = _repository(database_url)
    from ..definitions import build_resources

    try:
        with build_resources()["partners_api"].process_config_and_initialize_cm() as api:
            api.client.refetch = refetch
            result = preview_night(
                api.client,
                repository,
                ignored_courses=api.ignored_courses,
                refresh_days=api.membership_refresh_days,
                globalid_app=settings.globalid_app(),
                now=datetime.now(UTC),
                courses=listed(courses),
                users=listed(users),
                accept_report_sizes=listed(accept_report_sizes),
                say=say,
            )
    except ScopeError as error:
        raise click.ClickException(f"{error}; nothing was written") from None
    except Exception as error:  # a missing variable, an unreachable API: one line, masked
        from ..privacy import mask_url_passwords

        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise click.ClickException(
            f"{type(error).__name__}: {mask_url_passwords(first)[:500]}"
        ) from None
    out = open(out_file, "w", encoding="utf-8") if out_file else sys.stdout  # noqa: SIM115
    try:
        for line in result.plan.json_lines():
            out.write(line + "\n")
    finally:
        if out_file:
            out.close()
    for problem in result.problems:
        say(f"note: {problem}")
    say(f"dry run, nothing written (scope: {result.scope.describe()}): {result.plan.summary()}")


@main.command()
@click.option("--pending", is_flag=True, help="Only the jobs not yet delivered to Sidekiq.")
@database_url_option
def outbox(pending: bool, database_url: str | None) -> None:
    """The follow-up jobs for the website's Sidekiq: each row, and counts per job class."""
    import pandas as pd

    from ..steps.follow_up_delivery import outbox_counts

    rows = _repository(database_url).outbox(pending_only=pending)
    for row in rows.itertuples(index=False):
        delivered = pd.notna(row.dispatched_at)
        state = (
            f"delivered {row.dispatched_at:%Y-%m-%d %H:%M} jid {row.jid}"
            if delivered
            else "waiting"
        )
        click.echo(
            f"{row.id:>8}  {row.job_class:<36} run_at {row.run_at:%Y-%m-%d %H:%M}  {state}  "
            f"achievement {row.achievement_id or '-'}"
        )
    counts = outbox_counts(rows)
    click.echo("")
    for row in counts.itertuples(index=False):
        click.echo(f"{row.job_class:<36} delivered {row.delivered}  waiting {row.waiting}")
    click.echo(
        f"{'all':<36} delivered {int(counts['delivered'].sum())}  waiting {int(counts['waiting'].sum())}"
    )


@main.command()
@click.option("--show-emails", is_flag=True, help="Show external ids (emails) unmasked.")
@click.option(
    "--csv",
    "csv_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the list to this CSV file instead of printing it.",
)
@database_url_option
def unmatched(show_emails: bool, csv_file: str | None, database_url: str | None) -> None:
    """The teachers whose FutureLearn membership names no account: membership, reason, external
    id (masked unless --show-emails), first seen, last looked up, enrolments and courses."""
    from .unmatched import unmatched_memberships, unmatched_summary, write_unmatched_csv

    frame = unmatched_memberships(_repository(database_url), show_emails=show_emails)
    if csv_file:
        write_unmatched_csv(frame, csv_file)
        click.echo(f"wrote {len(frame)} row(s) to {csv_file}")
    elif not frame.empty:
        shown = frame.assign(
            first_seen=frame["first_seen"].dt.strftime("%Y-%m-%d %H:%M"),
            last_looked_up=frame["last_looked_up"].dt.strftime("%Y-%m-%d %H:%M"),
        )
        click.echo(shown.astype(object).where(shown.notna(), "-").to_string(index=False))
        click.echo("")
    click.echo(unmatched_summary(frame))


@main.command()
@scale_option
@seed_option
@click.option(
    "--latency-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Added latency per API request.",
)
@click.option(
    "--database-url",
    default=None,
    help="Benchmark against this database (default: a fresh SQLite file).",
)
@click.option(
    "--concurrency", default=4, show_default=True, type=int, help="Concurrent API requests."
)
@click.option("--output", default="bench.json", show_default=True, type=click.Path(dir_okay=False))
@click.option(
    "--floor/--no-floor",
    "with_floor",
    default=True,
    show_default=True,
    help="Also time the same downloads with bare requests + json (doubles a slow night).",
)
@click.option(
    "--profile",
    "profile_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Run each job under cProfile and write NIGHT-JOB.prof here (slower; for finding what dominates).",
)
@click.option(
    "--refresh-days",
    default=None,
    type=click.FloatRange(0, 365),
    help="FL_PARTNERS_MEMBERSHIP_REFRESH_DAYS for the nights (0: ask every night, as before).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Delete the rows of a --database-url that already holds data (never its tables).",
)
@click.option(
    "--changes",
    default="realistic",
    type=click.Choice(["realistic", "uniform"]),
    help="The steady night's changes: by how recently each run started, or 5% of all enrolments.",
)
def bench(
    scale,
    seed,
    latency_ms,
    database_url,
    concurrency,
    output,
    refresh_days,
    force,
    with_floor,
    profile_dir,
    changes,
) -> None:
    """Two nights (first, then steady) through the real jobs, with a table of measurements."""
    from pathlib import Path

    from .bench import DatabaseInUseError, run_bench

    try:
        code = run_bench(
            scale,
            seed,
            latency_ms,
            database_url,
            concurrency,
            Path(output),
            say=click.echo,
            force=force,
            refresh_days=refresh_days,
            profile_dir=Path(profile_dir) if profile_dir else None,
            with_floor=with_floor,
            changes=changes,
        )
    except DatabaseInUseError as error:
        raise click.ClickException(str(error)) from None
    raise SystemExit(code)


@main.group()
@click.option(
    "--database-url",
    envvar="TEACHCOMPUTING_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL (default: TEACHCOMPUTING_DATABASE_URL, else SQLite under PARTNERS_DAGSTER_DATA).",
)
@click.pass_context
def db(ctx: click.Context, database_url: str | None) -> None:
    """Teach Computing database: our migrations, the website's tables, checks and seeding."""
    from .. import settings
    from ..settings import ConfigurationError
    from ..teachcomputing.engine import make_engine

    try:
        ctx.obj = make_engine(database_url or settings.database_url())
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def db_upgrade(engine, revision: str) -> None:
    """Apply this project's migrations up to REVISION (default: head): only the
    partners_dagster_* tables, so it is safe on the website's database. Twice is a no-op."""
    from ..teachcomputing.migrate import current_revision, upgrade

    upgrade(engine, revision)
    click.echo(
        f"{engine.url.render_as_string(hide_password=True)} at revision {current_revision(engine)}"
    )


@db.command("downgrade")
@click.argument("revision")
@click.pass_obj
def db_downgrade(engine, revision: str) -> None:
    """Revert this project's migrations down to REVISION (``base`` removes the
    partners_dagster_* tables; the website's tables are never touched)."""
    from ..teachcomputing.migrate import current_revision, downgrade

    downgrade(engine, revision)
    click.echo(
        f"{engine.url.render_as_string(hide_password=True)} at revision {current_revision(engine)}"
    )


@db.command("create-teachcomputing-tables")
@click.pass_obj
def db_create_teachcomputing_tables(engine) -> None:
    """Create the website's tables (docs/database.md) in an empty database: for the embedded
    default, the demo, tests and the benchmark. Refuses when any of them exists."""
    from ..teachcomputing.schema import TablesExistError, create_teachcomputing_tables

    try:
        created = create_teachcomputing_tables(engine)
    except TablesExistError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"created {len(created)} tables: {', '.join(created)}")


@db.command("check")
@click.pass_obj
def db_check(engine) -> None:
    """Say, column by column, whether the jobs can run on this database; changes nothing.
    Exits non-zero when a website column the jobs use is missing or has the wrong type."""
    from ..teachcomputing.schema import check_database

    report = check_database(engine)
    for line in report.lines():
        click.echo(line)
    if report.problems:
        names = ", ".join(f"{c.table}.{c.column}" for c in report.problems[:10])
        raise click.ClickException(
            f"{len(report.problems)} column(s) missing or of the wrong type: {names}"
        )


@db.command("seed")
@click.option(
    "--from-sandbox",
    "from_sandbox",
    is_flag=True,
    required=True,
    help="Seed from a sandbox dataset.",
)
@scale_option
@seed_option
@click.pass_obj
def db_seed(engine, from_sandbox: bool, scale: str, seed: int) -> None:
    """Load the Teach Computing side of a sandbox dataset into an empty database."""
    from ..sandbox import generate
    from ..sandbox.seed import seed_from_dataset

    counts = seed_from_dataset(engine, generate(scale, seed))
    click.echo(", ".join(f"{n} {table}" for table, n in counts.items()))


if __name__ == "__main__":
    main()
