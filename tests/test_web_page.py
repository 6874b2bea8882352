"""The monitor page in a real browser: Debian's chromium, headless, driven by playwright, against the
real service (a uvicorn child process) fed over MQTT. Screenshots go to the test's temporary
directory (`page-*.png`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.support import web
from tests.support.publisher import Publisher

spawn_web = web.spawn_web
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
TOKEN = "page-test-token"
# Skipped where chromium is missing, except in CI (CI=true), where .ci/run has installed it.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"), reason="Debian's chromium is not installed (.ci/run does it)"
)


def status(online: bool, **extra: object) -> dict[str, object]:
    return {"status": "online" if online else "offline", **extra}


def reading(i: int, temperature: float) -> dict[str, object]:
    ts = datetime.now(UTC) - timedelta(minutes=20) + timedelta(seconds=30 * i)
    return {"temperature": temperature, "humidity": 40 + i, "voltage": 3.3, "timestamp": ts.isoformat()}


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=tmp_path / f"page-{name}.png")


async def test_the_page_shows_the_fleet_the_stream_and_the_dead_letters(
    spawn_web: web.Spawn, publisher: Publisher, ns: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    svc = await spawn_web(api_token=TOKEN)
    origin = urlsplit(svc.url).netloc
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 950})
            problems: list[str] = []
            hosts: set[str] = set()
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
            await page.goto(svc.url)
            await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=10_000)
            await expect(page.get_by_test_id("status")).to_have_text("healthy", timeout=10_000)

            # A device appears, online, with its telemetry; the message shows in the stream quickly.
            publisher.publish(f"{ns}/DEV1/status", status(True, firmware_version="2.1.0", ip_address="10.0.0.7"))
            publisher.publish_many((f"{ns}/DEV1/telemetry", reading(i, 20 + i % 5)) for i in range(30))
            row = page.locator('#fleet-rows tr[data-device="DEV1"]')
            await expect(row).to_have_attribute("data-state", "online", timeout=5_000)
            await expect(row).to_contain_text("2.1.0")
            await expect(page.get_by_test_id("count-online")).to_have_text("1")
            published = time.monotonic()
            publisher.publish(f"{ns}/DEV1/relay/2/status", {"state": True, "triggered_by": "manual"})
            relay_row = page.locator(f'#stream-rows tr[data-topic="{ns}/DEV1/relay/2/status"]')
            await expect(relay_row).to_have_count(1, timeout=2_000)
            latency = time.monotonic() - published
            await expect(row.locator(".relays span.on")).to_have_text("2")
            await expect(row).to_contain_text("°C")

            # It goes offline: the row and the counts flip.
            publisher.publish(f"{ns}/DEV1/status", status(False))
            await expect(row).to_have_attribute("data-state", "offline", timeout=3_000)
            await expect(page.get_by_test_id("count-offline")).to_have_text("1", timeout=3_000)

            # The payload of a message, on click.
            await relay_row.click()
            await expect(page.get_by_test_id("payload")).to_contain_text('"triggered_by": "manual"')

            # A filter narrows the stream (MQTT wildcards), and clearing it brings the rest back.
            stream_rows = page.locator("#stream-rows tr[data-topic]")
            await page.fill("#s-topic", f"{ns}/+/status")
            await expect(page.locator(f'#stream-rows tr[data-topic="{ns}/DEV1/status"]')).to_have_count(2)
            assert await stream_rows.count() == 2
            await page.fill("#s-topic", f"{ns}/DEV1/relay/#")
            await expect(stream_rows).to_have_count(1)
            await page.fill("#s-topic", "")
            await expect(stream_rows).to_have_count(33)
            await page.select_option("#s-outcome", "dead_letter")
            await expect(stream_rows).to_have_count(0)
            await page.select_option("#s-outcome", "")
            await shot(page, tmp_path, "1-fleet-and-stream")

            # Pause holds new messages back; resume shows them.
            await page.get_by_test_id("pause").click()
            publisher.publish(f"{ns}/DEV2/status", status(True))
            await expect(page.locator("#s-info")).to_contain_text("1 new", timeout=3_000)
            assert await page.locator(f'#stream-rows tr[data-topic="{ns}/DEV2/status"]').count() == 0
            await page.get_by_test_id("pause").click()
            await expect(page.locator(f'#stream-rows tr[data-topic="{ns}/DEV2/status"]')).to_have_count(1)

            # A bad message: dead-lettered in the stream and listed with its reason.
            publisher.publish(f"{ns}/DEV2/telemetry", b"{broken")
            await expect(page.locator("#stream-rows .outcome-dead_letter")).to_have_count(1, timeout=3_000)
            dead_row = page.locator(f'#dead-rows tr:has-text("{ns}/DEV2/telemetry")')
            await expect(dead_row).to_contain_text("decode", timeout=5_000)

            # Replay from the page: one whose payload is good now (stored by an older version).
            good = json.dumps({"temperature": 30.5, "timestamp": "2025-06-01T00:00:00+00:00"}).encode()
            now = datetime.now(UTC)
            replayable = await db.fetchval(
                "INSERT INTO dead_letters (received_at, last_received_at, topic, payload, qos, stage, error_class,"
                " error_message, digest) VALUES ($1, $1, $2, $3, 1, 'validation', 'PayloadInvalid', 'old rule', $4)"
                " RETURNING id",
                now, f"{ns}/DEV2/telemetry", good, hashlib.blake2b(good, digest_size=16).digest(),
            )  # fmt: skip
            await page.click("#d-refresh")
            button = page.locator(f'button[data-replay="{replayable}"]')
            await button.click()
            await expect(page.locator("#token-dialog")).to_be_visible()
            await page.fill("#tk-value", TOKEN)
            await page.click("#tk-ok")
            await expect(button).to_have_text("stored", timeout=5_000)
            assert await db.fetchval("SELECT resolved_at IS NOT NULL FROM dead_letters WHERE id = $1", replayable)
            assert await db.fetchval("SELECT temperature FROM telemetry WHERE device_id = 'DEV2'") == 30.5
            await expect(page.locator(f'#dead-rows tr[data-id="{replayable}"]')).to_have_count(0, timeout=5_000)
            # The token stays in this tab's session storage only.
            stored = await page.evaluate("[sessionStorage.getItem('autocore.apiToken'), localStorage.length]")
            assert stored == [TOKEN, 0]
            # The bad one replays and is refused again, which the page says.
            await dead_row.locator("button").click()
            await expect(dead_row.locator("button")).to_have_text("refused again", timeout=5_000)

            # Device detail: telemetry chart over the chosen range, relays, connectivity timeline.
            await row.click()
            detail = page.get_by_test_id("detail")
            await expect(detail).to_be_visible()
            await expect(detail.locator('.chart[data-metric="temperature"] polyline')).to_have_count(1)
            await expect(detail.locator("svg.timeline rect.off")).to_have_count(1)
            await expect(detail.locator("svg.timeline rect.on")).to_have_count(1)
            await expect(page.locator("#dt-relays")).to_contain_text("manual")
            await page.select_option("#dt-range", "86400")
            await expect(page.get_by_test_id("charts")).to_have_attribute("data-range", "86400")
            await expect(detail.locator('.chart[data-metric="temperature"] polyline')).to_have_count(1)
            await shot(page, tmp_path, "2-detail")
            await page.click("#dt-close")

            # Past a page of devices: paged, with the counts of all of them.
            publisher.publish_many((f"{ns}/BULK{i:03d}/status", status(i % 3 != 0)) for i in range(60))
            await expect(page.get_by_test_id("page-info")).to_have_text("1\N{EN DASH}50 of 62", timeout=8_000)
            await expect(page.get_by_test_id("count-online")).to_have_text("41")
            await expect(page.get_by_test_id("count-offline")).to_have_text("21")
            await page.click("#p-next")
            await expect(page.get_by_test_id("page-info")).to_have_text("51\N{EN DASH}62 of 62")
            await page.fill("#f-q", "bulk00")
            await expect(page.locator("#fleet-rows tr")).to_have_count(10)
            await page.select_option("#f-state", "offline")
            await expect(page.locator("#fleet-rows tr")).to_have_count(4)  # 000, 003, 006, 009
            await shot(page, tmp_path, "3-filtered")

            # The service goes away: the page says it lost its connection.
            await svc.kill()
            await expect(page.get_by_test_id("connection")).to_contain_text("connection to the service lost")
            await expect(page.locator("#healthbar.lost")).to_have_count(1)
            await shot(page, tmp_path, "4-lost")
        finally:
            await browser.close()
    print(f"\nmessage on the page {latency * 1000:.0f} ms after the broker acknowledged it; screenshots in {tmp_path}")
    assert hosts == {origin}, hosts
    assert not [p for p in problems if "Failed to load resource" not in p], problems
