"""The ordering rule (service/watch/liveness.py `walk`) case by case: each pair of status, will,
retained message, redelivery and timeout. The end-to-end tests (test_liveness.py) cover the same
rule through the real broker and database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.records import StatusRecord
from service.watch.history import HistoryRow
from service.watch.liveness import _State, walk

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = 1_800_000_000.0  # receive times (epoch seconds)


def status(online: bool, ts: datetime | None, received: float, *, retained: bool = False,
           dup: bool = False) -> StatusRecord:  # fmt: skip
    stamp = ts if ts is not None else datetime.fromtimestamp(received, UTC)
    return StatusRecord("D", stamp, online, None, None, None, ts is not None, retained, received, dup)


def known(online: bool | None, ts: datetime | None = T0, cause: str | None = "status") -> _State:
    return _State(online, ts, NOW - 10, NOW - 20, cause)


def test_newer_stamped_status_applies_older_does_not() -> None:
    state, _, changes = walk("D", [status(False, T0 + timedelta(seconds=1), NOW)], known(True), None)
    assert (state.is_online, state.status_ts, [c[3] for c in changes]) == (False, T0 + timedelta(seconds=1), ["status"])
    state, _, changes = walk("D", [status(True, T0 - timedelta(hours=1), NOW)], known(False), None)
    assert (state.is_online, changes) == (False, [])  # an old online received last is a replay


def test_will_without_or_with_old_timestamp_received_last_takes_the_device_offline() -> None:
    for ts in (None, T0 - timedelta(hours=1)):
        state, _, changes = walk("D", [status(False, ts, NOW)], known(True), None)
        assert (state.is_online, [c[3] for c in changes]) == (False, ["will"])
        assert state.status_ts == T0  # the device's clock is not moved by the will


def test_old_offline_followed_by_newer_messages_is_stale() -> None:
    recs = [status(False, T0 - timedelta(hours=1), NOW), status(True, T0, NOW + 0.1)]
    state, _, changes = walk("D", recs, known(True), None)
    assert (state.is_online, changes) == (True, [])
    state, _, changes = walk("D", [status(False, T0 - timedelta(hours=1), NOW)], known(True), other_seen=NOW + 0.1)
    assert (state.is_online, changes) == (True, [])


def test_old_offline_is_no_will_when_the_device_said_offline_after_its_stamp() -> None:
    # Another replica's queued share: an offline the device sent long ago, received after all it
    # sent since. A will is stamped at connect time, after every offline of earlier connections.
    late = status(False, T0 - timedelta(minutes=30), NOW)
    state, _, changes = walk("D", [late], known(True), None, said_offline=T0 - timedelta(minutes=20))
    assert (state.is_online, changes) == (True, [])
    state, _, changes = walk("D", [late], known(True), None, said_offline=T0 - timedelta(minutes=40))
    assert (state.is_online, [c[3] for c in changes]) == (False, ["will"])
    # The same within one batch: a newer stamped offline received before it.
    newer = status(False, T0 + timedelta(seconds=1), NOW - 1)
    history: list[HistoryRow] = []
    state, _, changes = walk("D", [newer, late], known(True), None, history)
    assert ([c[3] for c in changes], state.cause) == (["status"], "status")
    assert [h[4] for h in history] == ["status", "status"]  # both at their own time, no will row


def test_redelivered_offline_is_never_a_will() -> None:
    state, _, changes = walk("D", [status(False, T0 - timedelta(hours=1), NOW, dup=True)], known(True), None)
    assert (state.is_online, changes) == (True, [])


def test_retained_never_flips_a_known_device_and_fills_an_unknown_one() -> None:
    state, _, changes = walk("D", [status(False, None, NOW, retained=True)], known(True), None)
    assert (state.is_online, changes) == (True, [])
    state, _, changes = walk("D", [status(False, None, NOW, retained=True)], _State(None, None, NOW, None), None)
    assert (state.is_online, [c[3] for c in changes]) == (False, ["retained"])
    assert state.last_seen == NOW  # not "heard from": last_seen unchanged
    # ... and the device's own status, its clock behind ours, wins over it.
    later = status(True, datetime.fromtimestamp(NOW - 3, UTC), NOW + 5)
    state, _, changes = walk("D", [later], state, None)
    assert (state.is_online, [c[3] for c in changes]) == (True, ["status"])


def test_retained_with_a_newer_device_timestamp_applies() -> None:
    state, _, changes = walk("D", [status(False, T0 + timedelta(hours=1), NOW, retained=True)], known(True), None)
    assert (state.is_online, [c[3] for c in changes]) == (False, ["retained"])


def test_unstamped_status_follows_receive_order() -> None:
    # Within one batch only the last received counts (the offline was followed by an online).
    recs = [status(False, None, NOW), status(True, None, NOW + 1)]
    state, _, changes = walk("D", recs, known(True), None)
    assert (state.is_online, changes) == (True, [])
    # One after the other: each is the newest when it comes.
    state, _, changes = walk("D", [status(False, None, NOW)], known(True), None)
    state, _, more = walk("D", [status(True, None, NOW + 1)], state, None)
    assert (state.is_online, [(c[2], c[3]) for c in changes + more]) == (True, [(False, "will"), (True, "status")])
    assert state.status_ts == T0  # unstamped statuses never move the device's clock


def test_timed_out_device_comes_back_with_any_message_but_not_one_offline_by_its_own_status() -> None:
    timed_out = _State(False, T0, NOW - 300, NOW - 300, "timeout")
    state, _, changes = walk("D", [status(True, T0 - timedelta(hours=1), NOW)], timed_out, other_seen=NOW + 1)
    assert (state.is_online, [c[3] for c in changes]) == (True, ["message"])
    said_offline = _State(False, T0, NOW - 300, NOW - 300, "status")
    state, _, changes = walk("D", [status(True, T0 - timedelta(hours=1), NOW)], said_offline, other_seen=NOW + 1)
    assert (state.is_online, changes) == (False, [])


def test_a_new_device_created_by_its_own_unstamped_status_takes_it() -> None:
    # The row was inserted with this message's receive time, rounded up to the microsecond.
    received = 1_800_000_000.1234567
    state, _, changes = walk("D", [status(True, None, received)], _State(None, None, received + 4e-7, None), None)
    assert (state.is_online, [c[3] for c in changes]) == (True, ["status"])


def test_unstamped_online_applies_whether_or_not_telemetry_shares_its_batch() -> None:
    # Alone in its batch, or followed by the device's telemetry in the same one: the same answer,
    # or the outcome would depend on how messages fell into batches.
    for other in (None, NOW + 0.1):
        state, _, changes = walk("D", [status(True, None, NOW)], known(None, None, None), other_seen=other)
        assert (state.is_online, [c[3] for c in changes]) == (True, ["status"]), other
    # A later status in the batch still outranks it; an unstamped offline followed by news is stale.
    state, _, _ = walk("D", [status(True, None, NOW), status(False, None, NOW + 0.1)], known(None, None, None), None)
    assert state.is_online is False
    state, _, changes = walk("D", [status(False, None, NOW)], known(True), other_seen=NOW + 0.1)
    assert (state.is_online, changes) == (True, [])
