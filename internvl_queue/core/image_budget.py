"""The byte budget for queued images (``INTERNVL_MAX_QUEUED_BYTES``): Redis memory is bounded by
bytes, not by a count of jobs, so a queue of many large jobs is refused before Redis fills up.

Each accepted job's image bytes are noted in a sorted set (job id -> bytes). The total counts
only jobs still in the queued index (``keys.queued_key``): one Lua script sums them and drops the
entries of jobs that have left it (started, canceled, expired), so nothing has to remember to
take a job out. Its cost grows with the queue (bounded by ``INTERNVL_MAX_QUEUED_JOBS``).
Approximate under concurrent submits, like the job cap: checked, then added.
"""

from __future__ import annotations

import redis

from .keys import queued_bytes_key, queued_key

__all__ = ["ImageBudget"]

# KEYS[1] the bytes set, KEYS[2] the queued index. The total of jobs still queued; prunes the rest.
_QUEUED_BYTES = """
local total = 0
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  if redis.call('ZSCORE', KEYS[2], entries[i]) then
    total = total + tonumber(entries[i + 1])
  else
    redis.call('ZREM', KEYS[1], entries[i])
  end
end
return total
"""


class ImageBudget:
    def __init__(self, client: redis.Redis, max_bytes: int) -> None:
        self.redis = client
        self.max_bytes = max_bytes  # 0: no budget
        self._total = client.register_script(_QUEUED_BYTES)

    def queued_bytes(self) -> int:
        return int(self._total(keys=[queued_bytes_key(), queued_key()]))

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes of images fit (always, without a budget)."""
        return not self.max_bytes or self.queued_bytes() + size <= self.max_bytes

    def add(self, job_id: str, size: int) -> None:
        if self.max_bytes:
            self.redis.zadd(queued_bytes_key(), {job_id: size})

    def add_many(self, sizes: dict[str, int]) -> None:
        """``add`` for many jobs (a batch's) in one command."""
        if self.max_bytes and sizes:
            self.redis.zadd(queued_bytes_key(), sizes)
