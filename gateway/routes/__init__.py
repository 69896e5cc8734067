"""The `/v1` API, one module per area, each with its own router.

Routes are thin: authenticate (JWT only), check ownership, validate, then hand a
ledger command to `Gateway.execute`, which owns idempotency and waiting.
Every error is an RFC 9457 problem document (`gateway.problems`).
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.routes import accounts, admin, auth, payments, reviews, webhooks

# Each router carries the whole `/v1...` prefix itself instead of taking `/v1` from
# here: FastAPI puts the route as its own router declared it in `scope["route"]`, and
# the request metrics and spans are labelled with that route's path
# (`gateway.observability`), which must stay `/v1/payments`, not `/payments`.
# Included in this order, which is the order requests are matched in and the order
# of the OpenAPI document.
api_router = APIRouter()
api_router.include_router(auth.router)
api_router.include_router(accounts.router)
api_router.include_router(payments.router)
api_router.include_router(admin.router)
api_router.include_router(reviews.router)  # admin review queue (pipelines/fraud)
api_router.include_router(webhooks.router)  # webhook endpoints (pipelines/notifications)
