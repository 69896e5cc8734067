"""Fraud thresholds: `config/fraud.toml` loaded into a validated pydantic model.

Defaults live here (so a missing file or table still gives a working, documented
configuration) and the TOML overrides them; an unknown key is an error, so a
typo in a threshold cannot silently leave a rule at its default.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from paystream.settings import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "config" / "fraud.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RiskLevels(_Strict):
    medium: int = Field(default=40, ge=1)
    high: int = Field(default=80, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RiskLevels:
        if self.high < self.medium:
            raise ValueError("risk.high must be >= risk.medium")
        return self


class Scores(_Strict):
    high_value: int = Field(default=80, ge=0, le=1000)
    structuring: int = Field(default=50, ge=0, le=1000)
    round_amount: int = Field(default=10, ge=0, le=1000)
    velocity: int = Field(default=30, ge=0, le=1000)
    amount_velocity: int = Field(default=40, ge=0, le=1000)
    fan_out: int = Field(default=30, ge=0, le=1000)
    round_trip: int = Field(default=40, ge=0, le=1000)
    new_account: int = Field(default=40, ge=0, le=1000)


class Windows(_Strict):
    velocity_seconds: int = Field(default=600, gt=0)
    max_transfers: int = Field(default=20, ge=1)
    fan_out_seconds: int = Field(default=600, gt=0)
    max_receivers: int = Field(default=10, ge=1)
    amount_window_seconds: int = Field(default=3600, gt=0)
    structuring_seconds: int = Field(default=86400, gt=0)
    structuring_count: int = Field(default=3, ge=2)
    structuring_band: float = Field(default=0.9, gt=0, lt=1)
    round_trip_seconds: int = Field(default=86400, gt=0)
    new_account_seconds: int = Field(default=86400, gt=0)
    max_entries: int = Field(default=2000, ge=10)
    max_origins: int = Field(default=50, ge=1)
    alert_cooldown_seconds: int = Field(default=3600, ge=0)

    @property
    def outgoing_ms(self) -> int:
        """How long an outgoing transfer must stay in state: the longest window
        that counts every transfer (structuring keeps its own, sparser list)."""
        return 1000 * max(self.velocity_seconds, self.fan_out_seconds, self.amount_window_seconds)


class Processing(_Strict):
    max_event_age_seconds: int = Field(default=86400, gt=0)


class CurrencyLimits(_Strict):
    """Amounts in minor units of one currency."""

    high_value: int = Field(default=1_000_000, gt=0)
    round_unit: int = Field(default=100_000, gt=0)
    round_min: int = Field(default=500_000, gt=0)
    amount_per_hour: int = Field(default=2_500_000, gt=0)
    new_account_amount: int = Field(default=200_000, gt=0)


class FraudConfig(_Strict):
    risk: RiskLevels = RiskLevels()
    scores: Scores = Scores()
    windows: Windows = Windows()
    processing: Processing = Processing()
    currency: dict[str, CurrencyLimits] = Field(
        default_factory=lambda: {"default": CurrencyLimits()}
    )

    def limits(self, currency: str) -> CurrencyLimits:
        return self.currency.get(currency) or self.currency.get("default") or CurrencyLimits()


def load(path: Path | None = None) -> FraudConfig:
    path = path or Path(os.environ.get("PAYSTREAM_FRAUD_CONFIG") or DEFAULT_PATH)
    if not path.exists():
        return FraudConfig()
    return FraudConfig.model_validate(tomllib.loads(path.read_text()))


@lru_cache(maxsize=1)
def get_config() -> FraudConfig:
    return load()
