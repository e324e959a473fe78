"""Findings the user has judged: a suppressions file (like ThreadSanitizer's
``deadlock:`` suppressions) and a baseline report (only new findings count).
What they hide stays in the report, suppressed with reason ``user``.

A suppressions file is YAML::

    suppressions:
      - function: "translog_*"          # any frame of the finding's stacks (fnmatch)
        reason: Aria's log buffers are locked in a ring by one thread at a time
      - file: "*/third_party/*"         # the binary or source file of any frame
        kind: potential-deadlock        # only this kind
        reason: not ours
      - signature: sig-0c1d2e3f4a5b6c7d # exactly this finding (its "signature")
        reason: judged in review 2026-11

Every rule needs a ``reason`` and at least one of ``function``, ``file`` and
``signature``; all the fields a rule gives must match.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Any, Iterable, List, Optional, Sequence, Set

from igdeadlock.records import Frame
from igdeadlock.report.model import USER_SUPPRESSED, FindingView, signature

RULE_FIELDS = ("kind", "function", "file", "signature", "reason")


class SuppressionError(ValueError):
    """A suppressions file or baseline that cannot be used; says where and why."""


@dataclass(frozen=True)
class Suppression:
    reason: str
    kind: Optional[str] = None
    function: Optional[str] = None  # fnmatch pattern
    file: Optional[str] = None  # fnmatch pattern
    signature: Optional[str] = None

    def matches(self, finding: FindingView) -> bool:
        if self.kind is not None and finding.kind != self.kind:
            return False
        if self.signature is not None and signature(finding) != self.signature:
            return False
        frames = list(_frames(finding))
        if self.function is not None and not any(
                f.function and fnmatch.fnmatchcase(f.function, self.function) for f in frames):
            return False
        if self.file is not None and not any(
                any(p and fnmatch.fnmatchcase(p, self.file) for p in (f.file, f.source_file)) for f in frames):
            return False
        return True


def _frames(finding: FindingView) -> Iterable[Frame]:
    for edge in finding.edges:
        yield from edge.from_stack or ()
        yield from edge.to_stack or ()
    for wait in finding.waits:
        yield from wait.stack or ()


def parse_suppressions(document: Any, source: str) -> List[Suppression]:
    """Rules from a parsed YAML document; SuppressionError names the bad one."""
    if not isinstance(document, dict) or not isinstance(document.get("suppressions"), list):
        raise SuppressionError(f"{source}: expected a mapping with a list under 'suppressions'")
    rules = []
    for index, rule in enumerate(document["suppressions"], 1):
        where = f"{source}: suppression {index}"
        if not isinstance(rule, dict):
            raise SuppressionError(f"{where}: expected a mapping")
        unknown = sorted(set(rule) - set(RULE_FIELDS))
        if unknown:
            raise SuppressionError(f"{where}: unknown field(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(RULE_FIELDS)})")
        if not all(isinstance(value, str) and value for value in rule.values()):
            raise SuppressionError(f"{where}: every field must be a non-empty string")
        if not rule.get("reason"):
            raise SuppressionError(f"{where}: needs a reason")
        if not any(rule.get(name) for name in ("function", "file", "signature")):
            raise SuppressionError(f"{where}: needs a function, file or signature to match")
        rules.append(Suppression(**rule))
    return rules


def parse_baseline(document: Any, source: str) -> Set[str]:
    """The signatures of the findings of an earlier JSON report."""
    findings = document.get("findings") if isinstance(document, dict) else None
    if not isinstance(findings, list) or not str(document.get("schema", "")).startswith("igdeadlock/report/"):
        raise SuppressionError(f"{source}: not an igdeadlock JSON report (igdeadlock ... --format json)")
    return {f["signature"] for f in findings if isinstance(f, dict) and isinstance(f.get("signature"), str)}


def apply_suppressions(findings: Sequence[FindingView], rules: Sequence[Suppression],
                       baseline: Set[str], baseline_source: str = "the baseline") -> List[FindingView]:
    """The findings, with those a rule or the baseline matches suppressed (reason
    ``user``, and what suppressed them)."""
    result = []
    for finding in findings:
        if finding.suppressed is None:
            why = None
            if signature(finding) in baseline:
                why = f"in {baseline_source}"
            else:
                rule = next((r for r in rules if r.matches(finding)), None)
                if rule is not None:
                    why = rule.reason
            if why is not None:
                finding = replace(finding, suppressed=USER_SUPPRESSED, suppressed_by=why)
        result.append(finding)
    return result
