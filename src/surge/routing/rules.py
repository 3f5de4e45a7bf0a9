"""Rules routing: an ordered list of rules, each a target and the conditions a request
must meet to go there; the first rule whose conditions all hold wins (pure, no I/O).

Every config mistake is caught by `parse_rules` (or by constructing a `Condition`), so
matching never raises: at request time a fact that is missing or of the wrong type
simply does not match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# prompt_chars / prompt_tokens: a chat request's prompt length (0 for tensor requests).
FIXED_FIELDS = {"tenant": "text", "priority": "number", "input_rows": "number",
                "input_bytes": "number", "prompt_chars": "number",
                "prompt_tokens": "number"}  # fmt: skip
PREFIXED_FIELDS = {"header": "header", "param": "any"}  # header:<name>, param:<name>
OPS = {"eq": "==", "ne": "!=", "in": "in", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
       "prefix": "starts with"}  # fmt: skip
NUMERIC_OPS = {"lt", "le", "gt", "ge"}
_FIELDS_HELP = "header:<name>, param:<name>, " + ", ".join(FIXED_FIELDS)
_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    # True == 1 in Python; a rule on a boolean flag must not match the number 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _field_kind(name: str) -> str:
    if name in FIXED_FIELDS:
        return FIXED_FIELDS[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PREFIXED_FIELDS and rest:
        return PREFIXED_FIELDS[prefix]
    raise ValueError(f"unknown field {name!r}; fields are {_FIELDS_HELP}")


def _check_operand(kind: str, value: Any, where: str) -> None:
    """What an eq / ne / in operand may be for a field of this kind."""
    if kind in ("text", "header"):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
    elif kind == "number":
        if not _is_number(value):
            raise ValueError(f"{where} must be a number, got {value!r}")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(f"{where} must be a string, number, boolean or null, got {value!r}")


@dataclass(frozen=True)
class Condition:
    field: str  # header:<name> | param:<name> | tenant | priority | input_rows | input_bytes
    op: str  # "eq" | "ne" | "in" | "lt" | "le" | "gt" | "ge" | "prefix"
    value: Any

    def __post_init__(self) -> None:
        kind = _field_kind(self.field)
        if kind == "header":  # facts carry lower-case header names
            object.__setattr__(self, "field", self.field.lower())
        where = f"field {self.field!r}: value of {self.op!r}"
        if self.op not in OPS:
            raise ValueError(f"field {self.field!r}: unknown op {self.op!r}; ops are {list(OPS)}")
        if self.op in NUMERIC_OPS:
            if kind == "text":
                raise ValueError(f"field {self.field!r} is text: {self.op!r} needs a number")
            if not _is_number(self.value) or math.isnan(self.value):
                raise ValueError(f"{where} must be a number, got {self.value!r}")
        elif self.op == "prefix":
            if kind == "number":
                raise ValueError(f"field {self.field!r} is a number: 'prefix' needs text")
            if not isinstance(self.value, str):
                raise ValueError(f"{where} must be a string, got {self.value!r}")
        elif self.op == "in":
            if isinstance(self.value, str | bytes | Mapping) or not isinstance(
                self.value, Sequence | set | frozenset
            ):
                raise ValueError(f"{where} must be a list, got {self.value!r}")
            if not self.value:
                raise ValueError(f"{where} must list at least one value")
            for item in self.value:
                _check_operand(kind, item, f"{where} item")
            object.__setattr__(self, "value", tuple(self.value))  # frozen means hashable
        else:
            _check_operand(kind, self.value, where)

    def fact(self, facts: RequestFacts) -> Any:
        """The request's value for this field, or _MISSING."""
        name = self.field
        if name.startswith("header:"):
            return facts.headers.get(name[7:], _MISSING)
        if name.startswith("param:"):
            return facts.params.get(name[6:], _MISSING)
        value = getattr(facts, name)
        return _MISSING if value is None else value  # only tenant can be None

    def holds(self, actual: Any) -> bool:
        op, value = self.op, self.value
        if actual is _MISSING:
            return op == "ne"  # "not this value" is true of no value at all
        if op == "eq":
            return _equal(actual, value)
        if op == "ne":
            return not _equal(actual, value)
        if op == "in":
            return any(_equal(actual, item) for item in value)
        if op == "prefix":
            return isinstance(actual, str) and actual.startswith(value)
        number = self._number(actual)
        if number is None:
            return False
        if op == "lt":
            return number < value
        if op == "le":
            return number <= value
        if op == "gt":
            return number > value
        return number >= value

    def _number(self, actual: Any) -> float | None:
        if _is_number(actual):
            return actual
        # A header is always text on the wire; "x-budget: 12" is meant as a number.
        if isinstance(actual, str) and self.field.startswith("header:"):
            try:
                return float(actual)
            except ValueError:
                return None
        return None

    def describe(self, actual: Any) -> str:
        shown = "(missing)" if actual is _MISSING else repr(actual)
        return f"{self.field} {shown} {OPS[self.op]} {self.value!r}"


@dataclass(frozen=True)
class Rule:
    name: str
    when: tuple[Condition, ...]  # all must hold; none makes a catch-all
    target: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a rule needs a name, got {self.name!r}")
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"rule {self.name!r} needs a target, got {self.target!r}")
        object.__setattr__(self, "when", tuple(self.when))


@dataclass(frozen=True)
class RequestFacts:
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    tenant: str | None = None
    priority: int = 0
    input_rows: int = 0
    input_bytes: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    prompt_chars: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class RuleMatch:
    rule: str
    target: str
    reason: str


def first_match(rules: Sequence[Rule], facts: RequestFacts) -> RuleMatch | None:
    for rule in rules:
        seen = []
        for condition in rule.when:
            actual = condition.fact(facts)
            if not condition.holds(actual):
                break
            seen.append(condition.describe(actual))
        else:
            why = "; ".join(seen) if seen else "no conditions (catch-all)"
            return RuleMatch(rule.name, rule.target, f"rule {rule.name!r}: {why}")
    return None


_RULE_KEYS = {"name", "when", "target"}
_CONDITION_KEYS = {"field", "op", "value"}


def parse_rules(raw: list[dict[str, Any]]) -> tuple[Rule, ...]:
    """Rules from config-shaped dicts, e.g. {"name": "big", "target": "digits-big",
    "when": [{"field": "input_rows", "op": "gt", "value": 16}]}. A rule without "when"
    matches every request (a default at the end of the list).

    Raises ValueError naming the rule's index (and the condition's) and what to fix.
    """
    if not isinstance(raw, list):
        raise ValueError(f"rules must be a list, got {type(raw).__name__}")
    rules: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"rule {i}: must be a mapping, got {item!r}")
        label = f"rule {i} ({item.get('name')!r})" if "name" in item else f"rule {i}"
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise ValueError(
                f"{label}: unknown keys {sorted(unknown)}; keys are {sorted(_RULE_KEYS)}"
            )
        when = item.get("when", [])
        if not isinstance(when, list):
            raise ValueError(f"{label}: 'when' must be a list of conditions, got {when!r}")
        conditions = []
        for j, cond in enumerate(when):
            where = f"{label}, condition {j}"
            if not isinstance(cond, dict):
                raise ValueError(f"{where}: must be a mapping, got {cond!r}")
            keys = set(cond)
            if keys != _CONDITION_KEYS:
                raise ValueError(
                    f"{where}: needs exactly the keys {sorted(_CONDITION_KEYS)}, got {sorted(keys)}"
                )
            if not isinstance(cond["field"], str) or not isinstance(cond["op"], str):
                raise ValueError(f"{where}: 'field' and 'op' must be strings")
            try:
                conditions.append(Condition(cond["field"], cond["op"], cond["value"]))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        try:
            rule = Rule(item.get("name"), tuple(conditions), item.get("target"))  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        if rule.name in names:
            raise ValueError(f"{label}: the name {rule.name!r} is already taken")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)
