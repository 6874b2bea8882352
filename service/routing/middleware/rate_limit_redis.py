"""The Redis backend of the rate limiter: limits shared by every replica, one EVALSHA per batch.

The Lua script applies `rate_limit._decide`'s arithmetic to each message of the batch, in order,
and keeps each key's state in a hash that expires by itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from service.routing.middleware.rate_limit import RateRule, Request

# KEYS: one hash per (rule, key). ARGV: number of rules; per rule kind (1 fixed, 2 sliding,
# 3 bucket), limit, window, capacity, ttl ms; then per message: rule index, key index, time.
_LUA = """
local nr = tonumber(ARGV[1])
local rules = {}
local p = 2
for i = 1, nr do
  rules[i] = {tonumber(ARGV[p]), tonumber(ARGV[p+1]), tonumber(ARGV[p+2]), tonumber(ARGV[p+3]), ARGV[p+4]}
  p = p + 5
end
local eps = 1e-9
local state = {}
local out = {}
local n = 0
while p <= #ARGV do
  local r = rules[tonumber(ARGV[p])]
  local ki = tonumber(ARGV[p+1])
  local t = tonumber(ARGV[p+2])
  p = p + 3
  local kind, limit, win, cap = r[1], r[2], r[3], r[4]
  local s = state[ki]
  if s == nil then
    local v = redis.call('HMGET', KEYS[ki], 'a', 'b', 'c')
    s = {tonumber(v[1]), tonumber(v[2]), tonumber(v[3])}
    s.ttl = r[5]
    state[ki] = s
  end
  local ok = 0
  if kind == 3 then
    if s[1] == nil then s[1] = cap; s[2] = t
    elseif t > s[2] then s[1] = math.min(cap, s[1] + (t - s[2]) * limit / win); s[2] = t end
    if s[1] >= 1 - eps then s[1] = s[1] - 1; ok = 1 end
  else
    local w = math.floor(t / win)
    if kind == 1 then
      if s[1] == nil or w > s[1] then s[1] = w; s[2] = 0 end
      if s[2] < limit then s[2] = s[2] + 1; ok = 1 end
    else
      if s[1] == nil or w > s[1] + 1 then s[1] = w; s[2] = 0; s[3] = 0
      elseif w == s[1] + 1 then s[1] = w; s[2] = s[3]; s[3] = 0 end
      local weight = math.max(0, 1 - (t - s[1] * win) / win)
      if s[2] * weight + s[3] + 1 <= limit + eps then s[3] = s[3] + 1; ok = 1 end
    end
  end
  n = n + 1
  out[n] = ok
end
for ki, s in pairs(state) do
  redis.call('HSET', KEYS[ki], 'a', string.format('%.17g', s[1]), 'b', string.format('%.17g', s[2] or 0),
             'c', string.format('%.17g', s[3] or 0))
  redis.call('PEXPIRE', KEYS[ki], s.ttl)
end
return out
"""

_KIND = {"fixed_window": 1, "sliding_window": 2, "token_bucket": 3}


def _ttl_ms(rule: RateRule) -> int:
    # Long enough that the state outlives its use: two windows, or a bucket's full refill.
    refill = rule.capacity * rule.window_seconds / rule.limit
    return math.ceil(max(2 * rule.window_seconds, refill) * 1000) + 1000


class RedisBackend:
    """Limits shared by every replica through one Redis: one EVALSHA per batch."""

    name = "redis"

    def __init__(self, url: str, *, namespace: str, timeout: float = 0.5, retry_after: float = 1.0) -> None:
        from redis.asyncio import Redis  # imported only when configured

        self._redis: Any = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_LUA)
        self._namespace = namespace
        self._timeout = timeout
        self._retry_after = retry_after

    async def decide(self, rules: Sequence[RateRule], requests: Sequence[Request]) -> list[bool]:
        keys: dict[tuple[int, str], int] = {}
        args: list[Any] = [len(rules)]
        for rule in rules:
            args += [_KIND[rule.strategy], rule.limit, repr(rule.window_seconds), rule.capacity, _ttl_ms(rule)]
        prints = [rule.fingerprint() for rule in rules]
        for req in requests:
            ki = keys.setdefault((req.rule, req.key), len(keys) + 1)
            args += [req.rule + 1, ki, repr(req.t)]
        names = [f"{self._namespace}:{r}:{prints[r]}:{k}" for (r, k) in keys]
        result = await self._script(keys=names, args=args)
        return [bool(v) for v in result]

    async def close(self) -> None:
        await self._redis.aclose()
