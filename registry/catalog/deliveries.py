"""Webhook event deliveries (a transactional outbox, queued with the alias moves they report):
listed, and each delivery attempt counted.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.catalog.models import EventDelivery, utcnow
from registry.catalog.parts import CatalogPart
from registry.errors import NotFoundError
from registry.records import DeliveryRecord


class DeliveriesPart(CatalogPart):
    """Event deliveries."""

    def deliveries(
        self,
        *,
        pending_only: bool = False,
        event_id: str | None = None,
        limit: int = 1000,
        oldest_first: bool = False,
    ) -> list[DeliveryRecord]:
        with self._read() as session:
            order = EventDelivery.id if oldest_first else EventDelivery.id.desc()
            query = select(EventDelivery).order_by(order).limit(limit)
            if pending_only:
                query = query.where(EventDelivery.delivered_at.is_(None))
            if event_id is not None:
                query = query.where(EventDelivery.event_id == event_id)
            return [
                DeliveryRecord(
                    row.id,
                    row.event_id,
                    row.url,
                    row.payload,
                    row.created_at,
                    row.attempts,
                    row.last_attempt_at,
                    row.delivered_at,
                    row.last_error,
                )
                for row in session.scalars(query)
            ]

    def record_delivery(self, delivery_id: int, *, error: str | None) -> None:
        """Count one attempt: delivered when `error` is None."""

        def work(session: Session) -> None:
            row = session.get(EventDelivery, delivery_id)
            if row is None:
                raise NotFoundError(f"no event delivery {delivery_id}")
            now = utcnow()
            row.attempts += 1
            row.last_attempt_at = now
            if error is None:
                row.delivered_at = now
                row.last_error = ""
            else:
                row.last_error = error[:2000]

        self._retrying(work, what="record a delivery")
