"""What `Client` and `AsyncClient` share: their settings, who they are logged in as,
and how an operation of `paystream.client.calls` becomes one of their methods."""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from paystream import __version__
from paystream.client.calls import Call
from paystream.client.retry import Attempts, RetryPolicy, Session, request_args

USER_AGENT = f"paystream-python/{__version__}"


class BaseClient:
    """Settings and session of a client (see `Client` for the arguments)."""

    def __init__(
        self,
        *,
        email: str | None,
        password: str | None,
        token: str | None,
        timeout: float,
        retry: RetryPolicy,
        clock: Callable[[], float] | None,
        jitter: Callable[[], float] | None,
    ) -> None:
        if (email is None) != (password is None):
            raise ValueError("give both email and password, or neither")
        self.session = Session(email, password, token)
        self.timeout = timeout
        self.retry = retry
        self._clock = clock or time.monotonic
        self._jitter = jitter or random.random

    def _attempts(self, call: Call[Any]) -> Attempts:
        return Attempts(self.retry, self._clock(), call.wait)

    def _request_args(self, call: Call[Any], attempts: Attempts, token: str | None) -> dict[str, Any]:
        return request_args(call, attempts, token, now=self._clock(), timeout=self.timeout)

    def _relogin(self, sent: str | None) -> None:
        """Drop the token a 401 refused, unless another request renewed it already."""
        if self.session.token == sent:
            self.session.forget()

    @property
    def token(self) -> str | None:
        """The current access token (None before the first login)."""
        return self.session.token


def default_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {"User-Agent": USER_AGENT, **(headers or {})}


def as_method(op: Callable[..., Any], method: Callable[..., Any], owner: str) -> None:
    """Give a generated method the name, documentation and signature of the operation
    it sends, with `self` first and what the method returns, as `help()` shows them."""
    sig = inspect.signature(op)
    built = str(sig.return_annotation)  # "Call[Payment]", "Listing[Payment]", "Gathered[Line, Statement]"
    shape, inner = built.split("[", 1)[0], built.split("[", 1)[1][:-1]
    returns = {"Listing": f"{'AsyncIterator' if owner.startswith('Async') else 'Iterator'}[{inner}]",
               "Gathered": inner.split(",", 1)[-1].strip()}.get(shape, inner)  # fmt: skip
    method.__name__ = op.__name__
    method.__qualname__ = f"{owner}.{op.__name__}"
    method.__doc__ = op.__doc__
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *sig.parameters.values()], return_annotation=returns
    )
