"""What every schedule rule's parameter set shares: the JSON of a record's "params"."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar


class RuleParams:
    """Mixin for a rule's frozen dataclass of parameters; `rule` names the rule."""

    rule: ClassVar[str] = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.rule} parameters {sorted(unknown)}")
        return cls(**data)
