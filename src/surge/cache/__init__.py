"""The response cache's building blocks: canonical keys (`keys`), a compact codec for
tensors (`codec`), a bounded in-process LRU (`memory`), single-flight coalescing of
identical in-flight requests (`coalesce`), the Redis tier shared by every process
(`redis_cache`) and a vector index for the semantic cache (`semantic`).

Each is usable alone; the request path (serving/, api/) composes them: look up memory,
then Redis, coalesce a miss, compute, store in both.
"""
