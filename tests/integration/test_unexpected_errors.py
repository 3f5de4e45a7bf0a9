"""A bug answers 500 in the protocol's shape and the connection stays usable."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from conftest import free_port
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from surge.api.middleware import RequestIdMiddleware


async def broken(request):
    raise RuntimeError("a bug")


async def fine(request):
    return PlainTextResponse("ok")


def test_a_bug_gets_a_500_and_the_keep_alive_connection_survives():
    app = Starlette(
        routes=[Route("/v2/broken", broken), Route("/v2/fine", fine)],
        middleware=[Middleware(RequestIdMiddleware)],
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            failed = client.get("/v2/broken", headers={"X-Request-Id": "bug-1"})
            assert failed.status_code == 500
            assert failed.json() == {"error": "internal error: RuntimeError"}
            assert failed.headers["x-request-id"] == "bug-1"
            # Same connection: uvicorn closes it when an exception escapes the app.
            assert client.get("/v2/fine").text == "ok"
    finally:
        server.should_exit = True
        thread.join(10)
