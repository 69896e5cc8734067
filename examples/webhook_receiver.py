"""Receive paystream webhooks, refusing any delivery whose signature does not hold.

    PAYSTREAM_WEBHOOK_SECRET=whsec_... .venv/bin/python examples/webhook_receiver.py serve 8000

serves deliveries on port 8000 (register its https URL with
`client.create_webhook_endpoint(url)`, which answers the secret, once). Without
arguments it shows the check on this machine: it registers an endpoint as the admin
to get a secret, starts the receiver on 127.0.0.1, sends it one delivery signed the
way paystream's webhooks worker signs them and a tampered copy, and prints the
receiver's answers (200, then 400). Same environment as quickstart.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from paystream import webhooks


def receiver(secret: str) -> type[BaseHTTPRequestHandler]:
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))  # the raw bytes, as signed
            try:
                event = webhooks.construct_event(body, self.headers.get(webhooks.HEADER), secret)
            except webhooks.WebhookError as refused:
                print(f"refused: {refused.detail}")
                self.send_response(400)
            else:
                if event.id not in seen:  # a delivery may come twice: the id is the same
                    seen.add(event.id)
                    print(event.type, event.amount, event.data.get("currency"), event.data.get("payment_id"))
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def demo() -> None:
    from quickstart import admin_client

    with admin_client() as admin:
        endpoint = admin.create_webhook_endpoint("https://example.com/paystream-hooks")
        admin.delete_webhook_endpoint(endpoint.endpoint_id)  # only its secret is wanted here
    assert endpoint.secret is not None
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver(endpoint.secret))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    body = json.dumps({"id": "3f6c0d8e-0000-4000-8000-000000000001", "type": "PAYMENT_RECEIVED",
                       "created_at": int(time.time() * 1000),
                       "data": {"payment_id": "4f04...", "amount": 3000, "currency": "EUR"}})  # fmt: skip
    signed = {webhooks.HEADER: webhooks.sign(endpoint.secret, body), "Content-Type": "application/json"}
    genuine = httpx.post(url, content=body, headers=signed)
    tampered = httpx.post(url, content=body.replace("3000", "300000"), headers=signed)
    server.shutdown()
    print(f"genuine: {genuine.status_code}, tampered: {tampered.status_code}")
    assert (genuine.status_code, tampered.status_code) == (200, 400)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
        ThreadingHTTPServer(("", port), receiver(os.environ["PAYSTREAM_WEBHOOK_SECRET"])).serve_forever()
    else:
        demo()
