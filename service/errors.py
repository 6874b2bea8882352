"""Why a message could not be stored. Each error names the pipeline stage that refused it.

IngestError (stage)
├── DecodeError          decode: not UTF-8 JSON
├── PayloadInvalid       validation: JSON that does not fit the route's model
│   └── TopicMismatch    validation: payload contradicts the topic (device id, relay index)
├── NoRoute              route: no route for the topic
├── AuthFailed           auth: a bad, unknown or missing signature (routing/middleware/hmac.py)
└── StorageRejected      storage: the database refused the row for good
"""

from __future__ import annotations

from typing import ClassVar


class IngestError(Exception):
    stage: ClassVar[str] = "handler"


class DecodeError(IngestError):
    stage = "decode"


class PayloadInvalid(IngestError):
    stage = "validation"


class TopicMismatch(PayloadInvalid):
    pass


class NoRoute(IngestError):
    stage = "route"


class AuthFailed(IngestError):
    stage = "auth"


class StorageRejected(IngestError):
    stage = "storage"
