"""`paystream run gateway`: the API under uvicorn.

uvicorn's own X-Forwarded-For handling is switched off: which proxies to believe
is the gateway's decision (`gateway_trusted_proxies`), made per request.
"""

from __future__ import annotations

import uvicorn

from paystream.settings import get_settings


def run() -> None:
    settings = get_settings()
    uvicorn.run(
        "gateway.app:create_server_app",
        factory=True,
        host=settings.gateway_host,
        port=settings.gateway_port,
        workers=settings.gateway_workers,
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's records go through paystream's JSON logging
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
