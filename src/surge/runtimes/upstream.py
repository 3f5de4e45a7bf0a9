"""A model served by another server: Open Inference Protocol v2 or OpenAI embeddings.

The version's `model.yaml` names the runtime `upstream` and, in `parameters`, the
server (`url`), the `protocol` (`v2` or `openai`), the remote `model` name, a
`timeout_s` and `max_connections` for the pooled HTTP client; its tensors are declared
as for any model. Batches run on the replica's thread, so a blocking pooled client is
right here. A remote that fails or times out raises a 502/504 `SurgeError`; put the
endpoint in a fallback route to get a circuit breaker and a local alternative.

Warm-up sends nothing: a remote that is down at start must not stop this server from
starting; the latency model learns from the first real batches.

Each call carries `outbound_headers` (the trace context of the batch's request, set by
the replica before `run`), so the remote's spans join the caller's trace.

A call waits no longer than the batch's `deadline` (set by the replica too) when that
comes before the manifest's timeout: once the callers have had their 504, waiting on
would only keep the replica from the next batch. A batch already past it is not sent.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from surge.core.clock import monotonic
from surge.core.errors import SurgeError
from surge.core.tensors import NUMPY_DTYPES, Tensors
from surge.core.v2_data import from_json
from surge.runtimes.base import Runtime


class UpstreamRuntime(Runtime):
    def load(self) -> None:
        params = self.version.manifest.parameters
        ref = self.version.ref
        self.protocol = params.get("protocol", "v2")
        if self.protocol not in ("v2", "openai") or "url" not in params:
            raise SurgeError(
                "bad_manifest",
                f"{ref}: an upstream needs parameters.url and parameters.protocol v2 or openai",
                500,
            )
        self.remote_model = params.get("model", self.version.model)
        self.timeout_s = float(params.get("timeout_s", 2.0))
        self.client = httpx.Client(
            base_url=str(params["url"]).rstrip("/"),
            timeout=self.timeout_s,
            limits=httpx.Limits(max_connections=int(params.get("max_connections", 8))),
        )

    def run(self, inputs: Tensors) -> Tensors:
        rows = len(next(iter(inputs.values())))
        if rows == 0:  # warm-up: see the module docstring
            return {s.name: np.zeros((0, *s.shape[1:]), NUMPY_DTYPES[s.datatype])
                    for s in self.outputs}  # fmt: skip
        timeout_s = self._time_allowed_s()
        try:
            if self.protocol == "openai":
                return self._embeddings(inputs, timeout_s)
            return self._v2(inputs, timeout_s)
        except httpx.TimeoutException:
            cut = " (the time the request had left)" if timeout_s < self.timeout_s else ""
            raise SurgeError(
                "upstream_timeout",
                f"{self.version.ref}: the upstream did not answer within {timeout_s:.3f} s{cut}",
                504,
            ) from None
        except httpx.HTTPError as exc:
            raise SurgeError(
                "upstream_unreachable", f"{self.version.ref}: upstream failed: {exc}", 502
            ) from None

    def _time_allowed_s(self) -> float:
        """The manifest's timeout, or less when the batch's deadline comes first. httpx
        applies it to each phase (connect, send, every read), so a remote that trickles
        its answer can stretch it; one that is simply slow is cut off at the deadline."""
        if self.deadline is None:
            return self.timeout_s
        left_s = self.deadline - monotonic()
        if left_s <= 0:
            raise SurgeError(
                "deadline_exceeded",
                f"{self.version.ref}: the deadline passed before the batch was sent upstream",
                504,
            )
        return min(self.timeout_s, left_s)

    def _v2(self, inputs: Tensors, timeout_s: float) -> Tensors:
        body = {"inputs": [
            {"name": name, "datatype": self._spec(name).datatype, "shape": list(value.shape),
             "data": [v.decode() if isinstance(v, bytes) else v for v in value.ravel().tolist()]}
            for name, value in inputs.items()
        ]}  # fmt: skip
        answer = self.client.post(
            f"/v2/models/{self.remote_model}/infer",
            json=body,
            headers=self.outbound_headers,
            timeout=timeout_s,
        )
        doc = self._check(answer)
        return {
            o["name"]: from_json(o["name"], o["datatype"], o["data"], tuple(o["shape"]))
            for o in doc["outputs"]
        }

    def _embeddings(self, inputs: Tensors, timeout_s: float) -> Tensors:
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in inputs["text"]]
        answer = self.client.post(
            "/v1/embeddings",
            json={"model": self.remote_model, "input": texts},
            headers=self.outbound_headers,
            timeout=timeout_s,
        )
        doc = self._check(answer)
        vectors = np.asarray([item["embedding"] for item in doc["data"]], dtype=np.float32)
        tokens = doc.get("usage", {}).get("prompt_tokens", 0)
        return {
            "embedding": vectors,
            "token_count": np.full(len(texts), tokens // max(1, len(texts))),
        }

    def _check(self, answer: httpx.Response) -> dict[str, Any]:
        if answer.status_code != 200:
            status = 504 if answer.status_code == 504 else 502
            raise SurgeError(
                "upstream_error",
                f"{self.version.ref}: upstream answered {answer.status_code}: {answer.text[:200]}",
                status,
            )
        return answer.json()

    def _spec(self, name: str) -> Any:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise SurgeError("invalid_input", f"{self.version.ref} takes no input {name!r}", 400)

    def warmup_inputs(self, batch_size: int) -> Tensors:
        return {s.name: np.zeros((0, *(d if d > 0 else 1 for d in s.shape[1:])),
                                 NUMPY_DTYPES[s.datatype]) for s in self.inputs}  # fmt: skip
