"""Rules routing: each op, all conditions must hold, first match wins, missing facts,
and config errors that say which rule and field to fix."""

from __future__ import annotations

import pytest

from surge.routing.rules import (
    Condition,
    RequestFacts,
    Rule,
    RuleMatch,
    first_match,
    parse_rules,
)

FACTS = RequestFacts(
    headers={"x-tier": "gold", "x-budget-ms": "250", "x-region": "eu-west-1"},
    tenant="acme",
    priority=2,
    input_rows=32,
    input_bytes=4096,
    params={"temperature": 0.2, "model": "digits-v2", "stream": True, "tags": ["a"]},
)


def holds(field: str, op: str, value) -> bool:
    rule = Rule("r", (Condition(field, op, value),), "t")
    return first_match([rule], FACTS) is not None


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [("tenant", "eq", "acme", True), ("tenant", "eq", "beta", False),
     ("tenant", "ne", "beta", True), ("tenant", "ne", "acme", False),
     ("tenant", "in", ["beta", "acme"], True), ("tenant", "in", ["beta"], False),
     ("tenant", "prefix", "ac", True), ("tenant", "prefix", "me", False),
     ("priority", "eq", 2, True), ("priority", "eq", 2.0, True), ("priority", "in", [0, 1], False),
     ("input_rows", "lt", 32, False), ("input_rows", "le", 32, True),
     ("input_rows", "gt", 16, True), ("input_rows", "gt", 32, False),
     ("input_rows", "ge", 32, True), ("input_bytes", "lt", 10_000, True),
     ("header:x-tier", "eq", "gold", True), ("header:X-Tier", "eq", "gold", True),
     ("header:x-tier", "eq", "Gold", False),
     ("header:x-region", "prefix", "eu-", True),
     ("header:x-budget-ms", "lt", 300, True), ("header:x-budget-ms", "ge", 300, False),
     ("header:x-tier", "gt", 0, False),  # not a number: no match, no exception
     ("param:temperature", "le", 0.5, True), ("param:temperature", "gt", 0.5, False),
     ("param:model", "prefix", "digits", True), ("param:model", "gt", 1, False),
     ("param:temperature", "prefix", "0", False),
     ("param:stream", "eq", True, True), ("param:stream", "eq", 1, False),
     ("param:stream", "ne", 1, True), ("param:model", "in", ["digits-v1", "digits-v2"], True),
     ("param:tags", "eq", "a", False), ("param:tags", "lt", 5, False)],
)  # fmt: skip
def test_each_op(field, op, value, expected):
    assert holds(field, op, value) is expected


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [("header:x-canary", "eq", "1", False), ("header:x-canary", "ne", "1", True),
     ("header:x-canary", "in", ["1"], False), ("header:x-canary", "prefix", "", False),
     ("header:x-canary", "lt", 5, False), ("param:seed", "eq", None, False),
     ("param:seed", "ne", 7, True), ("param:seed", "ge", 0, False)],
)  # fmt: skip
def test_a_missing_header_or_param_never_matches_except_ne(field, op, value, expected):
    assert holds(field, op, value) is expected


def test_an_anonymous_request_has_no_tenant():
    rules = [Rule("named", (Condition("tenant", "in", ["acme"]),), "a"),
             Rule("not-acme", (Condition("tenant", "ne", "acme"),), "b")]  # fmt: skip
    match = first_match(rules, RequestFacts())
    assert match is not None and match.rule == "not-acme"
    assert match.reason == "rule 'not-acme': tenant (missing) != 'acme'"


def test_all_conditions_must_hold():
    big_gold = Rule(
        "big-gold",
        (Condition("input_rows", "gt", 16), Condition("header:x-tier", "eq", "gold")),
        "digits-big",
    )
    assert first_match([big_gold], FACTS) == RuleMatch(
        "big-gold",
        "digits-big",
        "rule 'big-gold': input_rows 32 > 16; header:x-tier 'gold' == 'gold'",
    )
    small = RequestFacts(headers={"x-tier": "gold"}, input_rows=4)
    assert first_match([big_gold], small) is None
    silver = RequestFacts(headers={"x-tier": "silver"}, input_rows=64)
    assert first_match([big_gold], silver) is None


def test_the_first_match_wins_and_a_rule_without_conditions_catches_the_rest():
    rules = parse_rules(
        [
            {"name": "vip", "when": [{"field": "tenant", "op": "eq", "value": "acme"}],
             "target": "fast"},
            {"name": "big", "when": [{"field": "input_rows", "op": "gt", "value": 16}],
             "target": "digits-big"},
            {"name": "default", "target": "digits"},
        ]
    )  # fmt: skip
    assert first_match(rules, FACTS).rule == "vip"  # also big, but vip comes first
    other = RequestFacts(tenant="beta", input_rows=32)
    assert first_match(rules, other).target == "digits-big"
    fallback = first_match(rules, RequestFacts(tenant="beta", input_rows=1))
    assert fallback == RuleMatch("default", "digits", "rule 'default': no conditions (catch-all)")
    assert first_match(rules[:2], RequestFacts()) is None


def test_parse_rules_builds_frozen_rules():
    (rule,) = parse_rules(
        [{"name": "eu", "when": [{"field": "header:X-Region", "op": "in",
                                  "value": ["eu-west-1", "eu-central-1"]}], "target": "eu"}]
    )  # fmt: skip
    assert rule == Rule("eu", (Condition("header:x-region", "in", ("eu-west-1", "eu-central-1")),),
                        "eu")  # fmt: skip
    assert hash(rule)  # hashable: safe to share and cache


def cond(field="input_rows", op="gt", value=16):
    return {"field": field, "op": op, "value": value}


@pytest.mark.parametrize(
    ("raw", "words"),
    [([{"name": "a", "when": [cond(field="rows")], "target": "t"}],
      r"rule 0 \('a'\), condition 0: unknown field 'rows'"),
     ([{"name": "a", "when": [cond(field="header:")], "target": "t"}], "unknown field 'header:'"),
     ([{"name": "a", "target": "t"}, {"name": "b", "when": [cond(op="between")], "target": "t"}],
      r"rule 1 \('b'\), condition 0: field 'input_rows': unknown op 'between'"),
     ([{"name": "a", "when": [cond(value="16")], "target": "t"}],
      r"rule 0 .* field 'input_rows': value of 'gt' must be a number, got '16'"),
     ([{"name": "a", "when": [cond(value=True)], "target": "t"}], "must be a number"),
     ([{"name": "a", "when": [cond(field="tenant", op="lt", value=3)], "target": "t"}],
      "field 'tenant' is text"),
     ([{"name": "a", "when": [cond(op="prefix", value="1")], "target": "t"}],
      "field 'input_rows' is a number"),
     ([{"name": "a", "when": [cond(field="header:x-tier", op="eq", value=1)], "target": "t"}],
      "field 'header:x-tier': value of 'eq' must be a string"),
     ([{"name": "a", "when": [cond(field="tenant", op="in", value="acme")], "target": "t"}],
      "must be a list"),
     ([{"name": "a", "when": [cond(field="tenant", op="in", value=[])], "target": "t"}],
      "at least one value"),
     ([{"name": "a", "when": [cond(field="priority", op="in", value=[1, "2"])], "target": "t"}],
      "item must be a number"),
     ([{"name": "a", "when": [cond(field="param:x", op="eq", value=[1])], "target": "t"}],
      "string, number, boolean or null"),
     ([{"name": "a", "when": [{"field": "tenant", "op": "eq"}], "target": "t"}],
      "condition 0: needs exactly the keys"),
     ([{"name": "a", "when": cond(), "target": "t"}], "'when' must be a list"),
     ([{"name": "a", "taget": "t"}], r"rule 0 \('a'\): unknown keys \['taget'\]"),
     ([{"when": [], "target": "t"}], "rule 0: a rule needs a name"),
     ([{"name": "a", "when": []}], "rule 0 .* needs a target"),
     ([{"name": "a", "target": "t"}, {"name": "a", "target": "u"}], "rule 1 .* already taken"),
     (["a"], "rule 0: must be a mapping"),
     ({"name": "a"}, "rules must be a list")],
)  # fmt: skip
def test_parse_errors_name_the_rule_and_field(raw, words):
    with pytest.raises(ValueError, match=words):
        parse_rules(raw)
