"""The state a stream processor's pure rules read and write.

Quix's `State` has this shape (get with a default, set); rules take a `Store` so they
run the same over Quix state in production and over a dict in tests and replays.
"""

from __future__ import annotations

from typing import Any, Protocol


class Store(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...


class DictStore:
    """A `Store` over a dict, for tests and replays."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)
