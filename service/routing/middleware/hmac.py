"""HMAC-SHA256 signed payloads: NEMO's envelope, verified and unwrapped before validation.

    {"payload": "<the original payload as a string>", "hmac": "<hex>", "algo": "sha256"}

The signature is HMAC-SHA256(secret, payload string as UTF-8), compared in constant time against
the current secret and, during a key rotation, the previous one. A valid envelope is unwrapped:
the route's model validates the inner payload. A bad signature, an unknown algorithm, a malformed
envelope, or an unsigned message on a route that requires signing is refused with `AuthFailed`
(stage "auth"); the dead letter keeps the exact bytes received.

Replays: a signed message carries no nonce, so a recorded one verifies again. That cannot move
state here (see docs/routing.md): rows are idempotent (the same message stores nothing new) and
device/relay state only moves forward in time (an older timestamp never overwrites a newer one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from service.errors import AuthFailed

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome
    from service.routing.middleware import Next

_ALGOS = {"sha256": hashlib.sha256}


class HmacVerifier:
    """Middleware: unwraps signed envelopes; `required` routes refuse unsigned messages."""

    def __init__(self, secrets: Sequence[bytes], *, required: bool | Collection[str] = False) -> None:
        if not secrets or any(not s for s in secrets):
            raise ValueError("HMAC needs a non-empty secret")
        self._secrets = tuple(secrets)
        self._required_all = required is True
        self._required: frozenset[str] = frozenset() if isinstance(required, bool) else frozenset(required)

    def describe(self, route: str = "") -> str:
        return "hmac(required)" if self.requires(route) else "hmac(optional)"

    def requires(self, route: str) -> bool:
        return self._required_all or route in self._required

    async def __call__(self, ctx: MessageContext, call_next: Next) -> Outcome:
        payload = ctx.payload
        # Cheap test first: an unsigned message on an optional route is not parsed twice.
        if b'"hmac"' not in payload:
            if self.requires(ctx.route.name):
                raise AuthFailed("unsigned message on a route that requires an HMAC signature")
            return await call_next(ctx)
        ctx.payload = self.verify(payload)
        return await call_next(ctx)

    def verify(self, raw: bytes) -> bytes:
        """The inner payload of a valid envelope; AuthFailed with the reason otherwise."""
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise AuthFailed("signed envelope is not valid JSON") from None
        if not isinstance(envelope, dict) or "hmac" not in envelope:
            # "hmac" appeared in the bytes but this is no envelope (say, a string value).
            raise AuthFailed("message mentions an HMAC but is not an envelope {payload, hmac, algo}")
        inner, signature, algo = envelope.get("payload"), envelope.get("hmac"), envelope.get("algo", "sha256")
        if not isinstance(inner, str) or not isinstance(signature, str):
            raise AuthFailed("envelope needs 'payload' and 'hmac' as strings")
        if algo not in _ALGOS:
            raise AuthFailed(f"unsupported HMAC algorithm {str(algo)[:20]!r} (only sha256)")
        try:
            given = bytes.fromhex(signature)
        except ValueError:
            raise AuthFailed("HMAC signature is not hex") from None
        body = inner.encode()
        digest = _ALGOS[algo]
        # Every secret is tried (no early exit), so timing tells nothing about which one matched.
        ok = False
        for secret in self._secrets:
            ok |= hmac.compare_digest(hmac.new(secret, body, digest).digest(), given)
        if not ok:
            raise AuthFailed("HMAC signature does not match (tampered payload or unknown key)")
        return body


def sign(secret: bytes, payload: str) -> bytes:
    """NEMO's envelope for `payload` (the publisher side; used by the simulator and the tests)."""
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"payload": payload, "hmac": mac, "algo": "sha256"}).encode()
