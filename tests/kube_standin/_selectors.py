"""Label selectors (query strings and LabelSelector objects) and field selectors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["label_selector_matches", "parse_field_selector", "parse_label_selector"]


_SET_REQ = re.compile(r"^\s*(!?)([^\s!=,()]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_label_selector(text: str) -> Callable[[dict], bool]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> a predicate on a labels dict; ValueError if malformed."""
    tests = []
    for part in _split_selector(text or ""):
        m = re.match(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s]*)\s*$", part)
        if m:
            key, op, value = m.groups()
            tests.append((lambda labels, k=key, v=value: labels.get(k) == v) if op != "!=" else
                         (lambda labels, k=key, v=value: labels.get(k) != v))
            continue
        m = _SET_REQ.match(part)
        if not m:
            raise ValueError(f"unable to parse requirement: {part!r}")
        neg, key, op, values = m.groups()
        if op:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            tests.append((lambda labels, k=key, s=vals: labels.get(k) in s) if op == "in" else
                         (lambda labels, k=key, s=vals: labels.get(k) not in s))
        else:
            tests.append((lambda labels, k=key: k not in labels) if neg else (lambda labels, k=key: k in labels))
    return lambda labels: all(t(labels or {}) for t in tests)


def label_selector_matches(selector: dict | None, labels: dict | None) -> bool:
    """A LabelSelector object (matchLabels, matchExpressions); an empty selector matches everything."""
    selector, labels = selector or {}, labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def parse_field_selector(text: str) -> Callable[[dict], bool]:
    """`metadata.name=x,status.phase!=Running`: any dotted path, = / == / !=."""
    tests = []
    for part in [p for p in (text or "").split(",") if p.strip()]:
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ValueError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        tests.append((path.split("."), op != "!=", value))

    def match(obj: dict) -> bool:
        for path, equal, value in tests:
            cur: Any = obj
            for key in path:
                cur = cur.get(key) if isinstance(cur, dict) else None
            if ((cur if cur is not None else "") == value) != equal:
                return False
        return True
    return match
