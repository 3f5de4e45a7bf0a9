"""The Open Inference Protocol (v2) part of the OpenAPI document.

Schemas follow KServe's published REST spec (open-inference-protocol,
`specification/protocol/open_inference_rest.yaml`), with surge's additions: the binary
tensor extension (`parameters.binary_data_size`, the `Inference-Header-Content-Length`
header, an `application/octet-stream` body), the request headers surge reads, and every
refusal the path can give.
"""

from __future__ import annotations

from surge.api.openapi_common import (
    CLIENT_SECURITY,
    INFER_ANSWER_HEADERS,
    JSON,
    PUBLIC_SECURITY,
    Doc,
    ok,
    operation,
    param_ref,
    path_param,
    ref,
    refusals,
)
from surge.config_security import TENANT_PATTERN
from surge.core.tensors import NUMPY_DTYPES

TAG = "Open Inference Protocol (v2)"

PARAMETERS_SCHEMA: Doc = {
    "description": "Free-form parameters. Surge reads `binary_data_size` on an input, "
    "`binary_data` on an output and `binary_data_output` on the request (binary tensor "
    "extension); routes may read others (an A/B key, a bandit's context).",
    "type": "object",
}
TENSOR_DATA: Doc = {
    "description": "Row-major tensor contents, flat or nested as the shape.",
    "type": "array",
    "items": {"anyOf": [ref("tensor_data"), {"type": ["number", "string", "boolean"]}]},
}
SHAPE: Doc = {"type": "array", "items": {"type": "integer"}}
DATATYPE: Doc = {"type": "string", "enum": list(NUMPY_DTYPES)}

SCHEMAS: Doc = {
    "metadata_server_response": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    },
    "metadata_tensor": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": DATATYPE,
            "shape": {**SHAPE, "description": "-1 marks a variable dimension"},
        },
        "required": ["name", "datatype", "shape"],
    },
    "metadata_model_response": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string", "description": "the version's runtime"},
            "inputs": {"type": "array", "items": ref("metadata_tensor")},
            "outputs": {"type": "array", "items": ref("metadata_tensor")},
        },
        "required": ["name", "platform"],
    },
    "parameters": PARAMETERS_SCHEMA,
    "tensor_data": TENSOR_DATA,
    "request_input": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": SHAPE,
            "datatype": DATATYPE,
            "parameters": ref("parameters"),
            "data": ref("tensor_data"),
        },
        "required": ["name", "shape", "datatype"],
        "description": "`data`, or `parameters.binary_data_size` with the bytes after "
        "the JSON header (binary tensor extension).",
    },
    "request_output": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": ref("parameters")},
        "required": ["name"],
    },
    "inference_request": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": ref("parameters"),
            "inputs": {"type": "array", "items": ref("request_input")},
            "outputs": {"type": "array", "items": ref("request_output")},
        },
        "required": ["inputs"],
    },
    "response_output": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": SHAPE,
            "datatype": DATATYPE,
            "parameters": ref("parameters"),
            "data": ref("tensor_data"),
        },
        "required": ["name", "shape", "datatype"],
        "description": "`data`, or (binary output) `parameters.binary_data_size`.",
    },
    "inference_response": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": ref("parameters"),
            "outputs": {"type": "array", "items": ref("response_output")},
        },
        "required": ["model_name", "outputs"],
    },
}

MODEL = path_param("model", "An endpoint or route name.")
VERSION = path_param("version", "A model version the endpoint serves.")
INFER_HEADERS = [
    param_ref(name)
    for name in (
        "X-Request-Id",
        "X-Request-Timeout-Ms",
        "X-Priority",
        "X-Tenant",
        "traceparent",
        "X-Surge-Receipt",
        "Content-Encoding",
        "Inference-Header-Content-Length",
    )
]
INFER_REFUSALS = refusals("v2", 400, 401, 403, 404, 413, 415, 429, 502, 503, 504)


def _infer(operation_id: str, pinned: bool) -> Doc:
    answer = ok(
        "The inference response.",
        ref("inference_response"),
        headers=(*INFER_ANSWER_HEADERS, "Inference-Header-Content-Length"),
    )
    answer["content"]["application/octet-stream"] = {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": "JSON header of Inference-Header-Content-Length bytes, "
            "then the binary outputs",
        },
    }
    return operation(
        "Inference" + (" on a pinned version" if pinned else ""),
        TAG,
        {"200": answer, **INFER_REFUSALS},
        CLIENT_SECURITY,
        operation_id=operation_id,
        description="Runs the model (or route) on the inputs. Needs a key with `infer` or "
        "`infer:<model>` when `auth.required`. A pinned version must be one the endpoint "
        "serves (stable or candidate).",
        parameters=[MODEL, *([VERSION] if pinned else []), *INFER_HEADERS],
        body={
            "required": True,
            "content": {
                JSON: {"schema": ref("inference_request")},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "binary tensor extension: the JSON header "
                        "(Inference-Header-Content-Length bytes), then the inputs",
                    },
                },
            },
        },
    )


def _metadata(operation_id: str, pinned: bool) -> Doc:
    return operation(
        "Model metadata" + (" of a version" if pinned else ""),
        TAG,
        {
            "200": ok("The model's metadata.", ref("metadata_model_response")),
            **refusals("v2", 401, 403, 404),
        },
        CLIENT_SECURITY,
        operation_id=operation_id,
        parameters=[MODEL, *([VERSION] if pinned else [])],
    )


def _ready(operation_id: str, pinned: bool) -> Doc:
    return operation(
        "Model ready" + (" (a version)" if pinned else ""),
        TAG,
        {
            "200": ok("The model accepts requests."),
            "503": ok("The model is loaded but not accepting requests."),
            **refusals("v2", 401, 403, 404),
        },
        CLIENT_SECURITY,
        operation_id=operation_id,
        parameters=[MODEL, *([VERSION] if pinned else [])],
    )


PATHS: Doc = {
    "/v2": {
        "get": operation(
            "Server metadata",
            TAG,
            {"200": ok("Name, version and extensions.", ref("metadata_server_response"))},
            PUBLIC_SECURITY,
            operation_id="v2_server_metadata",
        )
    },
    "/v2/health/live": {
        "get": operation(
            "Server live",
            TAG,
            {"200": ok("The process answers (a livenessProbe).")},
            PUBLIC_SECURITY,
            operation_id="v2_live",
        )
    },
    "/v2/health/ready": {
        "get": operation(
            "Server ready",
            TAG,
            {
                "200": ok("Every endpoint is loaded (a readinessProbe)."),
                "503": ok("Starting, or draining after SIGTERM."),
            },
            PUBLIC_SECURITY,
            operation_id="v2_ready",
        )
    },
    "/v2/models/{model}": {"get": _metadata("v2_model_metadata", False)},
    "/v2/models/{model}/ready": {"get": _ready("v2_model_ready", False)},
    "/v2/models/{model}/infer": {"post": _infer("v2_infer", False)},
    "/v2/models/{model}/versions/{version}": {"get": _metadata("v2_version_metadata", True)},
    "/v2/models/{model}/versions/{version}/ready": {"get": _ready("v2_version_ready", True)},
    "/v2/models/{model}/versions/{version}/infer": {"post": _infer("v2_version_infer", True)},
}

# Request headers the inference routes read (shared with OpenAI embeddings).
PARAMETERS: Doc = {
    "X-Request-Id": {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "The client's id for the request, kept when printable and at most "
        "128 characters; echoed in the answer and naming the receipt.",
        "schema": {"type": "string", "maxLength": 128},
    },
    "X-Request-Timeout-Ms": {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "description": "The request's deadline in milliseconds (default: the endpoint's).",
        "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 3600000},
    },
    "X-Priority": {
        "name": "X-Priority",
        "in": "header",
        "required": False,
        "description": "0 is best effort (shed first in a burst mode); default 1. Taken "
        "from a `gateway` key's request or an anonymous one on a trusted network.",
        "schema": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "X-Tenant": {
        "name": "X-Tenant",
        "in": "header",
        "required": False,
        "description": "The tenant, trusted only from a `gateway` key (or an anonymous "
        "call with `auth.anonymous_identity_headers`); other keys carry their own tenant.",
        "schema": {"type": "string", "pattern": TENANT_PATTERN},
    },
    "traceparent": {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "W3C trace context: the request's spans join this trace.",
        "schema": {"type": "string"},
    },
    "X-Surge-Receipt": {
        "name": "X-Surge-Receipt",
        "in": "header",
        "required": False,
        "description": "`1`: the receipt comes back inline in the answer's header of the "
        "same name (the name is `observability.receipts.inline_header`).",
        "schema": {"type": "string", "enum": ["0", "1"]},
    },
    "Content-Encoding": {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "description": "A compressed request body (tritonclient can send these).",
        "schema": {"type": "string", "enum": ["identity", "gzip", "deflate"]},
    },
    "Inference-Header-Content-Length": {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "Binary tensor extension: bytes of JSON before the binary data.",
        "schema": {"type": "integer", "minimum": 0},
    },
}
