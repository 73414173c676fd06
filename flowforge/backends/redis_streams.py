"""The coordinator's side of Redis Streams: reading partition events, dispatching attempts to
pool streams, cancel signals, trimming, and noticing when Redis lost its data."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgpack
import redis.asyncio as aioredis
import redis.exceptions as rexc

from flowforge import errors, keys, ports, wire

def _script(*names: str) -> str:
    """One script from the Lua files `names`, in order (helpers first)."""
    here = Path(__file__).parent
    return "".join((here / name).read_text() for name in names)


TRIM = _script("last_delivered.lua", "trim.lua")
REVOKE = _script("last_delivered.lua", "revoke.lua")
BOARD_EXCHANGE = _script("board_peers.lua", "board_exchange.lua")
BOARD_CLAIM = _script("board_peers.lua", "board_claim.lua")


def _translate(exc: Exception) -> errors.FlowForgeError:
    return errors.TemporaryError(f"redis: {exc}")


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> None:
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except rexc.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisQueue:
    """Implements ports.WorkQueue."""

    def __init__(self, client: aioredis.Redis, *, consumer: str = "owner") -> None:
        self.client = client
        self.consumer = consumer
        self._trim = client.register_script(TRIM)
        self._revoke = client.register_script(REVOKE)
        self._board_exchange = client.register_script(BOARD_EXCHANGE)
        self._board_claim = client.register_script(BOARD_CLAIM)
        self._epoch: bytes | None = None
        self._backlog_read: set[int] = set()  # partitions whose own pending entries were re-read

    @classmethod
    def connect(cls, url: str) -> RedisQueue:
        return cls(aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30))

    async def close(self) -> None:
        await self.client.aclose()

    async def read_events(self, partitions: Sequence[int], count: int, block_ms: int) -> list[ports.Delivery]:
        streams = {}
        for p in partitions:
            # After a restart, first re-read what this consumer was given but never acknowledged.
            streams[keys.events(p)] = ">" if p in self._backlog_read else "0"
        try:
            block = None if any(v == "0" for v in streams.values()) else block_ms
            reply = await self.client.xreadgroup(
                keys.COORDINATOR_GROUP, self.consumer, streams, count=count, block=block
            )
        except rexc.ResponseError as exc:
            # NOGROUP, or UNBLOCKED while we waited: Redis lost the stream. Recreate it.
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise _translate(exc) from None
            for p in partitions:
                await ensure_group(self.client, keys.events(p), keys.COORDINATOR_GROUP)
            return []
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None
        out: list[ports.Delivery] = []
        seen_backlog = {p for p in partitions if streams[keys.events(p)] == "0"}
        for stream, entries in reply or ():
            stream = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                if not fields:
                    continue
                try:
                    env = wire.unpack(fields[keys.ENTRY_FIELD])
                except (wire.WireError, KeyError):
                    env = {"k": "corrupt"}
                out.append(ports.Delivery(stream, entry_id, env))
        # A backlog read that came back short means the backlog is drained.
        if len(out) < count:
            self._backlog_read |= seen_backlog
        return out

    def reset(self) -> None:
        """Re-read this consumer's unacknowledged events on the next read."""
        self._backlog_read.clear()

    async def publish_events(self, events: Sequence[tuple[int, bytes]]) -> None:
        if not events:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for partition, payload in events:
                    pipe.xadd(keys.events(partition), {keys.ENTRY_FIELD: payload})
                await pipe.execute()
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None

    async def dispatch(self, entries: Sequence[tuple[int, str, bytes]]) -> list[bytes]:
        if not entries:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for partition, pool, payload in entries:
                    pipe.xadd(keys.pool_stream(partition, pool), {keys.ENTRY_FIELD: payload})
                return list(await pipe.execute())
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None

    async def revoke(self, partition: int, pool: str, entry_ids: Sequence[bytes]) -> list[bytes]:
        if not entry_ids:
            return []
        try:
            return list(await self._revoke(keys=[keys.pool_stream(partition, pool)],
                                           args=[keys.AGENT_GROUP, *entry_ids]))
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None

    async def exchange_board(self, me: str, store: Mapping[str, str], drop: Sequence[str], wanted: Sequence[str],
                             *, ttl_s: float, afresh: bool = False
                             ) -> tuple[bool, list[list[bytes | None]], list[str]]:
        """Store this coordinator's changed counts on the board (and drop those it no longer
        has), and read the items `wanted` from each other live coordinator (board_exchange.lua).
        Returns whether its hash was there before, the others' values, and (`afresh`) the items
        its hash held before this store."""
        args: list[str | int] = [me, keys.BOARD_PREFIX, int(ttl_s * 1000), int(afresh), len(store)]
        for item, value in store.items():
            args += [item, value]
        args += [len(drop), *drop, *wanted]
        try:
            existed, found, held = await self._board_exchange(keys=[keys.BOARD_MEMBERS, keys.board(me)],
                                                              args=args)
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None
        return (bool(existed), [[v if v else None for v in values] for values in found],
                [h.decode() for h in held if h != b"."])

    async def claim_board(self, me: str, checks: Sequence[str], *, ttl_s: float
                          ) -> tuple[int, list[bytes], list[bytes]]:
        """Store this coordinator's new counts of the items checked if every limit holds with
        the others' added (board_claim.lua). `checks`: (item, new value, limits) flattened.
        Returns (1 stored, 0 refused or -1 not on the board; the items over a limit; the
        others' sums per check)."""
        try:
            stored, over, sums = await self._board_claim(
                keys=[keys.BOARD_MEMBERS, keys.board(me)], args=[me, keys.BOARD_PREFIX, int(ttl_s * 1000), *checks])
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None
        return int(stored), list(over), list(sums)

    async def leave_board(self, me: str) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(keys.board(me))
                pipe.srem(keys.BOARD_MEMBERS, me)
                await pipe.execute()
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None

    async def publish_waits(self, partitions: Sequence[int], waits: dict[str, str], ttl_s: float) -> None:
        """Replace the partitions' quota wait reasons (lane -> reason), expiring after `ttl_s`."""
        from flowforge.backends import waits as waiting

        await waiting.publish(self.client, partitions, waits, ttl_s)

    async def commit(
        self,
        dispatches: Sequence[tuple[int, str, bytes]],
        stops: Sequence[tuple[str, str, int]],
        deliveries: Sequence[ports.Delivery],
    ) -> list[bytes]:
        """A cycle's Redis side in one round trip: dispatch entries, stop signals, then the
        acknowledgement of the events that caused them (last, so a crash re-reads them).
        Returns the dispatch entries' ids."""
        by_stream: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        if not (dispatches or stops or by_stream):
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for partition, pool, payload in dispatches:
                    pipe.xadd(keys.pool_stream(partition, pool), {keys.ENTRY_FIELD: payload})
                if stops:
                    pipe.publish(keys.CANCEL_CHANNEL, msgpack.packb([list(a) for a in stops], use_bin_type=True))
                for stream, ids in by_stream.items():
                    pipe.xack(stream, keys.COORDINATOR_GROUP, *ids)
                return list((await pipe.execute())[: len(dispatches)])
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None

    async def attempts_in_stream(self, partition: int, pool: str) -> set[tuple[str, str, int]]:
        """Attempts with an entry in the pool stream (the stream is shallow: trimmed to unacked)."""
        found: set[tuple[str, str, int]] = set()
        start = "-"
        while True:
            entries = await self.client.xrange(keys.pool_stream(partition, pool), min=start, count=1000)
            for entry_id, fields in entries:
                try:
                    env = wire.unpack(fields[keys.ENTRY_FIELD])
                    found.add((env["run"], env["task"], env["attempt"]))
                except (wire.WireError, KeyError):
                    continue
            if len(entries) < 1000:
                return found
            start = "(" + entries[-1][0].decode()

    async def events_position(self, partition: int) -> bytes:
        """The id of the newest entry ever added to the partition's event stream."""
        try:
            info = await self.client.xinfo_stream(keys.events(partition))
        except rexc.ResponseError:  # no such stream
            return b"0-0"
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None
        return info["last-generated-id"]

    async def events_handled_through(self, partition: int, position: bytes) -> bool:
        """Whether the coordinators have read and acknowledged every event up to `position`."""
        stream = keys.events(partition)
        try:
            groups = await self.client.xinfo_groups(stream)
            group = next((g for g in groups if g["name"] == keys.COORDINATOR_GROUP.encode()), None)
            if group is None:
                return True  # the stream was lost: nothing is left to handle
            if _stream_id(group["last-delivered-id"]) < _stream_id(position):
                return False
            if not group["pending"]:
                return True
            summary = await self.client.xpending(stream, keys.COORDINATOR_GROUP)
        except rexc.ResponseError:
            return True
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise _translate(exc) from None
        return summary["min"] is None or _stream_id(summary["min"]) > _stream_id(position)

    async def check_epoch(self) -> bool:
        current = await self.client.get(keys.EPOCH)
        if self._epoch is not None and current == self._epoch:
            return True
        if current is None:
            current = secrets.token_hex(8).encode()
            # NX: if several coordinators race, they all adopt the same new epoch.
            await self.client.set(keys.EPOCH, current, nx=True)
            current = await self.client.get(keys.EPOCH)
        first = self._epoch is None
        self._epoch = current
        return first

    async def trim(self, partition: int, pools: Sequence[str]) -> None:
        await self._trim(keys=[keys.events(partition)], args=[keys.COORDINATOR_GROUP])
        for pool in pools:
            await self._trim(keys=[keys.pool_stream(partition, pool)], args=[keys.AGENT_GROUP])

    async def ensure_groups(self, partitions: Sequence[int], pools: Sequence[str]) -> None:
        for p in partitions:
            await ensure_group(self.client, keys.events(p), keys.COORDINATOR_GROUP)
            for pool in pools:
                await ensure_group(self.client, keys.pool_stream(p, pool), keys.AGENT_GROUP)

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self.client.ping(), timeout=2)
        except (rexc.ConnectionError, rexc.TimeoutError, TimeoutError) as exc:
            raise _translate(exc) from None
