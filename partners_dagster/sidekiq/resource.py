"""The website's Sidekiq Redis as a Dagster resource."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field

from ..settings import DEFAULT_GLOBALID_APP

if TYPE_CHECKING:  # redis-py is imported when a client is made, not when definitions load.
    import redis

    from partners_dagster.sidekiq.delivery import DeliveryResult, OutboxStore


class SidekiqResource(ConfigurableResource):
    """Where follow-up jobs go: the Redis the website's Sidekiq reads.

    Without ``redis_url`` nothing is delivered; ``deliver`` only reports what waits. The URL's
    password never appears in ``repr``, logs or errors.
    """

    redis_url: str | None = Field(
        default=None,
        description="The website's Sidekiq Redis (TEACHCOMPUTING_SIDEKIQ_REDIS_URL); "
        "empty: jobs wait in the outbox.",
    )
    globalid_app: str = Field(
        default=DEFAULT_GLOBALID_APP,
        description="GlobalID app of the website's models (TEACHCOMPUTING_GLOBALID_APP).",
    )
    timeout_seconds: float = Field(default=10.0, description="Redis connect and read timeout.")

    @property
    def configured(self) -> bool:
        return bool(self.redis_url and self.redis_url.strip())

    @property
    def masked_url(self) -> str | None:
        from partners_dagster.sidekiq.delivery import mask_redis_url

        return mask_redis_url(self.redis_url.strip()) if self.configured else None

    def client(self) -> redis.Redis | None:
        """A new redis-py client, or None when no URL is configured."""
        if not self.configured:
            return None
        from partners_dagster.sidekiq.delivery import redis_client_from_url

        return redis_client_from_url(self.redis_url.strip(), timeout_seconds=self.timeout_seconds)

    def deliver(self, store: OutboxStore, *, now: datetime) -> DeliveryResult:
        """Deliver the outbox once (see ``partners_dagster.sidekiq.delivery.deliver``)."""
        from partners_dagster.sidekiq.delivery import deliver

        client = self.client()
        try:
            return deliver(
                store,
                client,
                globalid_app=self.globalid_app,
                now=now,
                redis_label=self.masked_url,
            )
        finally:
            if client is not None:
                client.close()

    def __repr_args__(self) -> Any:
        # pydantic builds repr and str from these; the URL's password is masked.
        for name, value in super().__repr_args__():
            yield name, (self.masked_url if name == "redis_url" else value)
