"""Webhook channel: a POST of the JSON body with an Idempotency-Key (the event id, the same on every
retry) and, with ALERT_WEBHOOK_SECRET, `X-Autocore-Signature: sha256=<hex HMAC-SHA256 of the body>`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from uuid import UUID

import httpx
from pydantic import SecretStr

from service.notify.channels import Delivery, DeliveryError


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookChannel:
    def __init__(self, secret: SecretStr | None, timeout: float) -> None:
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        # No redirects: a 3xx is a misconfiguration to see, not a place to send alerts to.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)

    def headers(self, event_id: UUID, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(event_id),
            "User-Agent": "autocore-monitor",
        }
        if self._secret is not None:
            headers["X-Autocore-Signature"] = signature(self._secret, body)
        return headers

    async def send_many(self, items: Sequence[Delivery]) -> list[str | None]:
        # Each its own URL (the sender's waves): no order among them, so at once.
        return list(await asyncio.gather(*(self._reason(item) for item in items)))

    async def _reason(self, item: Delivery) -> str | None:
        try:
            await self.send(item.target, item.event_id, item.body)
        except DeliveryError as exc:
            return str(exc)
        return None

    async def send(self, target: str, event_id: UUID, body: str) -> None:
        data = body.encode()
        try:
            response = await self._client.post(target, content=data, headers=self.headers(event_id, data))
        except httpx.TimeoutException:
            raise DeliveryError("timed out") from None
        except httpx.HTTPError as exc:
            # The class only: httpx's text can carry the URL, and URLs can carry credentials.
            raise DeliveryError(exc.__class__.__name__) from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"HTTP {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()
