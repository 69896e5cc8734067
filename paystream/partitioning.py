"""Which partition a key belongs to, computed the way Kafka's Java client does.

The single-writer rule rests on one fact: every producer puts an account's
records on the same partition. Producers of single commands get that from
librdkafka's `murmur2_random` partitioner. A *batch* of commands is produced to
one partition chosen by the client, so the client must compute the partition of
each account itself, and the ledger must check every item against the partition
it consumes (a client with a wrong partition count must never make two writers
touch one account). Both use this module.
"""

from __future__ import annotations

from functools import lru_cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` (a 32-bit MurmurHash2 with Kafka's seed), as an unsigned int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=262_144)
def partition_for(key: str, partitions: int) -> int:
    """The partition librdkafka's `murmur2_random` and Java's default partitioner pick
    for a non-empty key (cached: the ledger asks once per item of every batch)."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1024)
def key_for_partition(partition: int, partitions: int, stem: str = "batch") -> str:
    """A key that lands on `partition`: batches are keyed by it, so that even a
    producer that ignores the explicit partition puts them where they belong."""
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not in [0, {partitions})")
    i = 0
    while True:
        key = f"{stem}-{partition}-{i}"
        if partition_for(key, partitions) == partition:
            return key
        i += 1
