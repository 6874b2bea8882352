"""Does a broker that ignored our MQTT 5 CONNECT speak MQTT 3.1.1?

A broker that knows only 3.1.1 should answer an MQTT 5 CONNECT with "unacceptable protocol
version" (the transport refuses it then), but some (amqtt 0.12) read the MQTT 5 properties as the
payload and wait for bytes that never come. After such a silence, one short connection with a
minimal 3.1.1 CONNECT (clean session, an id of its own, no credentials: any CONNACK at all
proves the protocol) tells "does not support MQTT 5" from "does not answer". Our own session
at the broker is not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid

_DISCONNECT = b"\xe0\x00"


def connect_311(client_id: str, keepalive: int = 10) -> bytes:
    cid = client_id.encode()
    # Protocol name "MQTT", level 4 (3.1.1), flags: clean session, keepalive; payload: client id.
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body  # short ids only: one byte of remaining length


async def speaks_only_311(host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> bool:
    """True when the broker answers a 3.1.1 CONNECT with a CONNACK (whatever its return code)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            writer.write(connect_311(f"autocore-probe-{uuid.uuid4().hex[:8]}"))
            await writer.drain()
            answer = await reader.readexactly(4)
            return answer[0] == 0x20 and answer[1] == 2
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(_DISCONNECT)
                writer.close()
