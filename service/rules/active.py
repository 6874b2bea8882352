"""The rules in force: loaded at start-up, swapped whole on reload (POST /rules/reload, SIGHUP).

`hooks` is the mapping the pipeline looks its route up in (service/pipeline.py); a reload replaces
its contents between two messages, so a message is evaluated by the old rules or the new ones,
never a mix. A file that does not load leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.notify.outbox import Outbox
from service.records import DeadLetterRecord
from service.routing.router import Router
from service.rules import metrics
from service.rules.loader import RULE_ALERT, RulesError, RuleSet, load_file
from service.rules.peers import PeerListener, new_origin
from service.rules.stage import RouteStage, stored_entries
from service.watch.alerts import resolve_alerts
from service.watch.sweep import raw_connection

if TYPE_CHECKING:
    from service.pipeline import MessageContext, Outcome
    from service.storage.writer import Committed

log = logging.getLogger(__name__)

Hook = Callable[["MessageContext", "Outcome"], "Outcome"]

_STORED = "SELECT rule, device_id, relay, value, changed_at, since, fired_at FROM rule_state WHERE rule = ANY(:names)"

# Open rule alerts that no rule in force can resolve any more (its rule was removed, or lost its
# alert action): nothing would ever say their condition is over.
_ORPHANS = """
SELECT device_id, key FROM alerts
WHERE kind = $1 AND resolved_at IS NULL AND NOT coalesce(details->>'rule' = ANY($2::text[]), false)
"""


class ActiveRules:
    def __init__(
        self, path: str | None, router: Router, rules: RuleSet | None = None, *, outbox: Outbox | None = None
    ) -> None:
        self.path = path
        self.router = router
        self.outbox = outbox or Outbox()
        self.rules = rules if rules is not None else (load_file(path, router) if path else RuleSet())
        self.hooks: dict[str, Hook] = {}
        self.last_error: str | None = None
        self.last_reload: float | None = None
        self._lock = asyncio.Lock()
        self._peers: PeerListener | None = None
        self.origin = new_origin()
        self._observers: list[Callable[[RuleSet], None]] = []

    def observe(self, observer: Callable[[RuleSet], None]) -> None:
        """Call `observer(rules)` now and whenever other rules are put in force (a reload), before
        the first message they see: the runtime tells its router the rules' publish topics."""
        self._observers.append(observer)
        observer(self.rules)

    async def start(self, engine: AsyncEngine) -> None:
        """Hooks for the loaded rules, their caches primed with the stored state; listening to other
        replicas' changes (only with a rules file: a service without rules pays nothing)."""
        if self.path:
            self._peers = PeerListener(engine, self.origin, self.changed_elsewhere, lambda: self._resync(engine))
            self._peers.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._peers.listening.wait(), 10)
        self._install(self.rules, await _stored(engine, self.rules))
        await self._resolve_orphans(engine, self.rules)
        if self.rules.rules:
            log.info("%d rules loaded from %s", len(self.rules.rules), self.rules.source)

    async def reload(self, engine: AsyncEngine) -> RuleSet:
        """Read the file again; RulesError (and the old rules stay) if it does not load."""
        async with self._lock:
            if not self.path:
                raise RulesError("no rules file: set RULES_FILE")
            try:
                rules = load_file(self.path, self.router)
            except RulesError as exc:
                self.last_error = str(exc)
                metrics.RELOADS.labels("refused").inc()
                log.error("rules reload refused, the old rules stay: %s", exc)
                raise
            self._install(rules, await _stored(engine, rules))
            self.rules, self.last_error, self.last_reload = rules, None, time.time()
            await self._resolve_orphans(engine, rules)
            metrics.RELOADS.labels("loaded").inc()
            log.info("rules reloaded: %d rules from %s", len(rules.rules), rules.source)
            return rules

    async def _resolve_orphans(self, engine: AsyncEngine, rules: RuleSet) -> int:
        """Resolve (and notify, through the outbox) the open alerts of rules no longer in force.

        Their state rows stay: a rule put back resumes from them, as after a restart. (Every replica
        must read the same file: one with an older file would resolve the alerts of newer rules.)
        """
        names = [r.name for r in rules.rules if r.has_alert]
        try:
            async with raw_connection(engine) as conn, conn.transaction():
                keys = [(r["device_id"], RULE_ALERT, r["key"]) for r in await conn.fetch(_ORPHANS, RULE_ALERT, names)]
                resolved = await resolve_alerts(conn, self.outbox, keys)
        except (OSError, asyncpg.PostgresError, SQLAlchemyError) as exc:
            # A database away at start-up must not stop the service: the next start or reload does it.
            log.warning("open alerts of removed rules not resolved now (database: %s)", exc.__class__.__name__)
            return 0
        if resolved:
            log.info("resolved %d open alerts of rules no longer in force", resolved)
        return resolved

    async def stop(self) -> None:
        if self._peers is not None:
            await self._peers.stop()

    def changed_elsewhere(self, keys: Sequence[tuple[str, str]]) -> None:
        """Another replica changed these (rule, device) states: our cached values for them are unknown."""
        for rule_name, device in keys:
            try:
                route = self.rules[rule_name].route
            except KeyError:
                continue
            stage = self.hooks.get(route)
            if isinstance(stage, RouteStage):
                stage.forget(device)

    async def _resync(self, engine: AsyncEngine) -> None:
        async with self._lock:
            self._install(self.rules, await _stored(engine, self.rules))

    def committed(self, committed: Committed) -> None:
        """After-commit observer: a message the database refused (a dead letter of stage "storage")
        lost its RuleRecord, so its device's cached values may be ahead of the stored state."""
        if not committed.records.dead or not self.hooks:
            return
        for pending in committed.messages:
            first = pending.records[0] if pending.records else None
            if type(first) is not DeadLetterRecord or first.stage != "storage" or pending.route not in self.hooks:
                continue
            found = self.router.match(pending.message.topic)
            stage = self.hooks[pending.route]
            if found is not None and isinstance(stage, RouteStage):
                stage.forget(found[1]["device_id"])

    def _install(self, rules: RuleSet, stored: list[dict[str, Any]]) -> None:
        fresh: dict[str, Hook] = {
            name: RouteStage(route_rules, stored_entries(route_rules, stored), self.origin)
            for name, route_rules in rules.by_route.items()
        }
        for observer in self._observers:
            observer(rules)
        self.hooks.clear()
        self.hooks.update(fresh)
        metrics.LOADED.set(len(rules.rules))


async def _stored(engine: AsyncEngine, rules: RuleSet) -> list[dict[str, Any]]:
    if not rules.rules:
        return []
    async with engine.connect() as conn:
        result = await conn.execute(text(_STORED), {"names": [r.name for r in rules.rules]})
        return [dict(r) for r in result.mappings()]
