"""Why queued attempts wait for a quota, as the coordinators publish it and the API reads it.

Per partition, one small Redis hash `ff:{pN}:quota-waits`: lane (`pool|tenant|project`) ->
reason, e.g. "quota: tenant acme max_gpu 2 (2 in use)". Each publish replaces the hash whole
(one script per key, so it also works on Redis Cluster) and sets a short TTL: the reasons of a
coordinator that stopped expire. The coordinator publishes only when the map changed, or to
refresh the TTL; nothing is written per task (see `QuotaFeed.publish_waits`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
import redis.exceptions as rexc

from flowforge import errors, keys

MAX_LANES = 1000  # reasons published per partition at most (a bound on the hash and the script)

# KEYS[1]: the hash; ARGV: ttl seconds, then field, value, field, value, ...
_REPLACE = """
redis.call('DEL', KEYS[1])
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


async def publish(client: aioredis.Redis, partitions: Sequence[int], waits: Mapping[str, str], ttl_s: float) -> None:
    """Replace the quota wait reasons of `partitions` with `waits` (lane field -> reason)."""
    script = client.register_script(_REPLACE)
    args: list[str | int] = [max(1, round(ttl_s))]
    for field, reason in sorted(waits.items())[:MAX_LANES]:
        args += [field, reason]
    try:
        async with client.pipeline(transaction=False) as pipe:
            for p in partitions:
                await script(keys=[keys.quota_waits(p)], args=args, client=pipe)
            await pipe.execute()
    except (rexc.ConnectionError, rexc.TimeoutError) as exc:
        raise errors.TemporaryError(f"redis: {exc}") from None


class WaitReader:
    """The API's side: the reasons of some lanes of one partition, in one round trip."""

    def __init__(self, redis_url: str, partitions: int) -> None:
        self.client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.partitions = partitions

    async def reasons(self, run_id: str, lanes: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """(pool, tenant, project) -> why its queued attempts wait, for the lanes of `lanes` that
        wait for a quota; the run's partition is found from its id."""
        if not lanes:
            return {}
        key = keys.quota_waits(keys.partition_of(run_id, self.partitions))
        fields = [keys.quota_wait_field(*lane) for lane in lanes]
        try:
            found = await self.client.hmget(key, fields)
        except rexc.RedisError as exc:  # unreachable, or anything else: the run reads without reasons
            raise errors.TemporaryError(f"redis: {exc}") from None
        return {lane: why for lane, why in zip(lanes, found) if why}

    async def close(self) -> None:
        await self.client.aclose()
