"""Canonical cache keys: equal inputs to the same model version give the same key, and
anything that could change the answer gives another.

A key is a blake2b digest over framed fields: the model version's identity, the kind
of key (request, row, chat), the tenant when the cache is scoped per tenant, the
canonical JSON of the parameters, then the inputs. Every field is length-prefixed, so
no two different inputs frame to the same byte stream (["ab", "c"] vs ["a", "bc"],
or a name that ends where a dtype begins).

128 bits (32 hex characters) are plenty: a collision between two honest inputs needs
~2^64 entries, and poisoning another tenant's entry means a second preimage of a key
the attacker does not even see (2^128 work). A longer key would only cost Redis memory.

Keys are bare digests; the request path namespaces them per endpoint
(`endpoint_key`), which is what a purge per endpoint matches on. The config does not
forbid ':' in an endpoint's name, so it is escaped there: the prefix of endpoint "a"
never matches the keys of an endpoint "a:b".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import orjson

DIGEST_BYTES = 16  # 32 hex characters: see above
# Changing how keys are framed changes this, so old entries simply stop matching.
PERSON = b"surge-cache-v1"
NUMERIC_KINDS = "biufcSU"  # dtypes whose raw buffer is their value

# Chat parameters that change how an answer is delivered or accounted, not what it says;
# every other parameter is part of the key (an unknown one costs hits, never correctness).
CHAT_IGNORED_PARAMS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
# What an OpenAI-style provider samples at when a request names no temperature.
DEFAULT_TEMPERATURE = 1.0


class Uncacheable(ValueError):
    """The input has no canonical form (an object element that is not text or bytes, a
    NaN parameter, ...): the caller serves it uncached."""


def _frame(h: Any, data: bytes | memoryview) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def model_identity(name: str, version: str | int, checksum: str) -> bytes:
    """The prefix every key of one model version starts from: a new version (or the same
    version number with another artifact) never matches an old version's answers."""
    parts = (name, str(version), checksum)
    return b"".join(len(p).to_bytes(8, "little") + p for p in (s.encode() for s in parts))


def version_identity(spec: Any) -> bytes:
    """A serving version's identity (`model_identity`) from its spec: name, version and
    a digest of its manifest (checksums and parameters) and its quantization."""
    manifest = orjson.dumps(
        spec.version.manifest.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS
    )
    digest = hashlib.sha256(manifest + b"|" + str(spec.settings.quantization).encode())
    return model_identity(spec.version.model, spec.version.version, digest.hexdigest())


def endpoint_prefix(endpoint: str) -> str:
    """What every key of `endpoint` starts with, and what a purge of it matches."""
    return endpoint.replace("%", "%25").replace(":", "%3A") + ":"


def endpoint_key(endpoint: str, key: str) -> str:
    """The key as stored: namespaced by endpoint, so a purge per endpoint is a prefix."""
    return endpoint_prefix(endpoint) + key


def _canonical(value: Any) -> Any:
    """JSON-ready data in one form per meaning: 0 and 0.0 (a temperature) are the same
    parameter, numpy scalars are their Python values, tuples are lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Uncacheable(f"parameter value {value!r} has no canonical form")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise Uncacheable("parameter names must be strings")
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise Uncacheable(f"a {type(value).__name__} parameter has no canonical form")


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS)


def _base(identity: bytes, kind: bytes, params: Mapping[str, Any] | None, tenant: str | None):
    """The hash state after the fields every key of a request shares. Most requests of
    an endpoint share them all (one version, no parameters, few tenants): the state is
    kept (bounded), and callers hash on from a copy of it, never from it."""
    return _base_of(identity, kind, canonical_json(params) if params else b"{}", tenant).copy()


@lru_cache(maxsize=1024)  # parameters come from requests: the bound keeps them few
def _base_of(identity: bytes, kind: bytes, params_json: bytes, tenant: str | None) -> Any:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=PERSON)
    _frame(h, identity)
    _frame(h, kind)
    if tenant is None:
        h.update(b"\x00")  # shared scope: distinct from any tenant, "" included
    else:
        h.update(b"\x01")
        _frame(h, tenant.encode())
    _frame(h, params_json)
    return h


def _element_bytes(x: Any) -> bytes:
    # Text and bytes frame alike: a BYTES tensor arrives as JSON strings or as binary
    # data depending on the protocol, and both mean the same input to the model.
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise Uncacheable(f"a BYTES element of type {type(x).__name__} has no canonical form")


def _objects(elements: Sequence[Any] | np.ndarray) -> bytes:
    parts = []
    for x in elements:
        b = _element_bytes(x)
        parts.append(len(b).to_bytes(8, "little"))
        parts.append(b)
    return b"".join(parts)


def _numeric(arr: np.ndarray) -> np.ndarray:
    """C-contiguous and little-endian: equal values give equal bytes."""
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise Uncacheable(f"dtype {arr.dtype} has no canonical bytes")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps a 0-d array 0-d


@lru_cache(maxsize=1024)  # a model's inputs come in few names, dtypes and row shapes
def _header(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    fields = (name.encode(), dtype.encode(), np.asarray(shape, dtype="<i8").tobytes())
    return b"".join(len(f).to_bytes(8, "little") + f for f in fields)


def _check_tensors(tensors: Mapping[str, np.ndarray]) -> None:
    if not tensors:
        raise Uncacheable("no inputs")
    for name, arr in tensors.items():
        if not isinstance(arr, np.ndarray):
            raise Uncacheable(f"input {name!r} is a {type(arr).__name__}, not an array")


def tensor_key(
    identity: bytes,
    tensors: Mapping[str, np.ndarray],
    params: Mapping[str, Any] | None = None,
    tenant: str | None = None,
) -> str:
    """The key of a whole request: every input (sorted by name) with its dtype, shape and
    values, and the parameters that change the answer (the caller leaves out the ones
    that do not, such as a request id). `tenant` is given only when the scope is tenant."""
    _check_tensors(tensors)
    h = _base(identity, b"request", params, tenant)
    for name in sorted(tensors):
        arr = tensors[name]
        if arr.dtype == object:
            h.update(_header(name, "object", arr.shape))
            _frame(h, _objects(arr.ravel()))
        else:
            arr = _numeric(arr)
            h.update(_header(name, arr.dtype.str, arr.shape))
            _frame(h, arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def row_keys(
    identity: bytes,
    tensors: Mapping[str, np.ndarray],
    params: Mapping[str, Any] | None = None,
    tenant: str | None = None,
) -> list[str]:
    """One key per row of a batched request (row i of every input), so that a request
    whose rows were mostly seen before computes only the new ones. A row's key does not
    depend on the other rows or on its position in the batch."""
    _check_tensors(tensors)
    rows = {arr.shape[0] if arr.ndim else -1 for arr in tensors.values()}
    if len(rows) != 1 or -1 in rows:
        raise Uncacheable("per-row keys need inputs that share their first (batch) dimension")
    (n,) = rows
    if n == 0:
        return []
    base = _base(identity, b"row", params, tenant)
    # Per input: its framed header (the same for every row) and a way to read row i.
    readers = []
    for name in sorted(tensors):
        arr = tensors[name]
        if arr.dtype == object:
            header = _header(name, "object", arr.shape[1:])
            readers.append((header, None, arr.reshape(n, -1), 0))
        else:
            arr = _numeric(arr)
            header = _header(name, arr.dtype.str, arr.shape[1:])
            row_bytes = arr.itemsize * math.prod(arr.shape[1:])
            readers.append((header, memoryview(arr.reshape(-1).view(np.uint8)), None, row_bytes))
    keys = []
    for i in range(n):
        h = base.copy()
        for header, flat, objects, row_bytes in readers:
            h.update(header)
            if flat is None:
                _frame(h, _objects(objects[i]))
            else:
                _frame(h, flat[i * row_bytes : (i + 1) * row_bytes])
        keys.append(h.hexdigest())
    return keys


def chat_key(
    identity: bytes,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any] | None = None,
    tenant: str | None = None,
) -> str:
    """The key of a chat request: the messages (roles, contents, tool calls: all of it)
    and every parameter but those that only change delivery (`CHAT_IGNORED_PARAMS`)."""
    kept = {k: v for k, v in (params or {}).items() if k not in CHAT_IGNORED_PARAMS}
    h = _base(identity, b"chat", kept, tenant)
    _frame(h, canonical_json(list(messages)))
    return h.hexdigest()


def is_deterministic_chat(params: Mapping[str, Any] | None, allow_sampling: bool) -> bool:
    """Whether a chat answer may be cached: greedy decoding (temperature 0) or a seeded
    sample repeat themselves; an unseeded sample does not, and caching it would turn a
    varied answer into a fixed one, unless the endpoint's config allows that. No
    temperature means the provider's default (1.0), so it samples."""
    if allow_sampling:
        return True
    params = params or {}
    temperature = params.get("temperature")
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return False  # not ours to judge: validation rejects it elsewhere
    if temperature == 0:
        return True
    return params.get("seed") is not None
