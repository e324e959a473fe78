"""Suppressions files and baselines: what the user judged stays listed, suppressed."""

from __future__ import annotations

import pytest

from igdeadlock.records import Frame
from igdeadlock.report.model import EdgeView, FindingView, signature
from igdeadlock.report.suppressions import (
    SuppressionError,
    apply_suppressions,
    parse_baseline,
    parse_suppressions,
)

A, B = (0x1000, 0), (0x2000, 0)


def finding(function: str = "transfer", file: str = "/srv/bank", kind: str = "potential-deadlock") -> FindingView:
    address = 0x11 if function == "transfer" else 0x99  # other code, other sites
    stack = [Frame(address, file, function, 4, "/src/bank.c", 23)]
    edges = (EdgeView(A, B, 1, "t", 0, 0, 0, (), stack, stack), EdgeView(B, A, 2, "t", 0, 0, 0, (), stack, stack))
    return FindingView(kind, None, 7, 1, "bank", 1, (A, B), (0, 0), (1, 2), edges)


def rules(*entries: dict) -> list:
    return parse_suppressions({"suppressions": list(entries)}, "rules.yaml")


@pytest.mark.parametrize("rule,matched", [
    ({"function": "trans*", "reason": "r"}, True),
    ({"function": "pay_*", "reason": "r"}, False),
    ({"file": "*/bank.c", "reason": "r"}, True),  # a frame's source file
    ({"file": "/srv/*", "reason": "r"}, True),  # a frame's binary
    ({"function": "transfer", "kind": "actual-deadlock", "reason": "r"}, False),  # every field must match
])
def test_rules_match_by_function_file_and_kind(rule, matched):
    (result,) = apply_suppressions([finding()], rules(rule), set())
    assert (result.suppressed == "user") is matched
    if matched:
        assert result.suppressed_by == "r"


def test_a_signature_names_one_finding_and_stays_the_same_once_suppressed():
    original = finding()
    (result,) = apply_suppressions([original, finding(function="other")][:1],
                                   rules({"signature": signature(original), "reason": "judged"}), set())
    assert result.suppressed == "user" and signature(result) == signature(original)
    (other,) = apply_suppressions([finding(function="other")],
                                  rules({"signature": signature(original), "reason": "judged"}), set())
    assert other.suppressed is None


def test_a_baseline_hides_what_it_already_had():
    old = {"schema": "igdeadlock/report/v3", "findings": [{"signature": signature(finding())}]}
    baseline = parse_baseline(old, "old.json")
    new = finding(function="pay")
    results = apply_suppressions([finding(), new], [], baseline, "the baseline old.json")
    assert [(r.suppressed, r.suppressed_by) for r in results] == [("user", "in the baseline old.json"), (None, None)]


@pytest.mark.parametrize("document,message", [
    ([], "expected a mapping with a list under 'suppressions'"),
    ({"suppressions": [{"function": "f"}]}, "suppression 1: needs a reason"),
    ({"suppressions": [{"reason": "r"}]}, "needs a function, file or signature"),
    ({"suppressions": [{"function": "f", "reason": "r", "thread": "1"}]}, "unknown field(s) thread"),
    ({"suppressions": [{"function": 3, "reason": "r"}]}, "every field must be a non-empty string"),
])
def test_a_bad_rule_is_named(document, message):
    with pytest.raises(SuppressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_suppressions(document, "rules.yaml")


def test_a_baseline_must_be_a_report():
    with pytest.raises(SuppressionError, match="not an igdeadlock JSON report"):
        parse_baseline({"findings": []}, "x.json")
