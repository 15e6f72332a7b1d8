"""The four PATCH flavours: JSON merge patch, strategic merge (approximated), JSON patch, and apply."""

from __future__ import annotations

import copy
from typing import Any

from ._types import ApiError

__all__ = ["json_patch", "merge_patch", "strategic_merge_patch"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch, except lists of objects with a `name` (containers, env, volumes, ports) merge by name."""
    if isinstance(patch, list) and isinstance(target, list) and patch and \
            all(isinstance(i, dict) and "name" in i for i in patch + target):
        result = [copy.deepcopy(i) for i in target]
        for item in patch:
            if item.get("$patch") == "delete":
                result = [i for i in result if i["name"] != item["name"]]
                continue
            for i, old in enumerate(result):
                if old["name"] == item["name"]:
                    result[i] = strategic_merge_patch(old, item)
                    break
            else:
                result.append(copy.deepcopy(item))
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, ops: list) -> Any:
    """RFC 6902: add, remove, replace, test, copy, move."""
    doc = copy.deepcopy(target)

    def walk(path: str) -> tuple[Any, str]:
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path.split("/")[1:]]
        cur = doc
        for key in keys[:-1]:
            cur = cur[int(key)] if isinstance(cur, list) else cur[key]
        return cur, keys[-1]

    def get(path: str) -> Any:
        parent, key = walk(path)
        return parent[int(key)] if isinstance(parent, list) else parent[key]

    for op in ops:
        kind, path = op["op"], op["path"]
        try:
            if kind == "test":
                if get(path) != op["value"]:
                    raise ValueError(f"test failed at {path}")
                continue
            value = copy.deepcopy(op["value"]) if kind in ("add", "replace") else \
                copy.deepcopy(get(op["from"])) if kind in ("copy", "move") else None
            if kind == "move":
                parent, key = walk(op["from"])
                parent.pop(int(key)) if isinstance(parent, list) else parent.pop(key)
            parent, key = walk(path)
            if kind == "remove":
                parent.pop(int(key)) if isinstance(parent, list) else parent.pop(key)
            elif isinstance(parent, list):
                index = len(parent) if key == "-" else int(key)
                if kind == "replace":
                    parent[index] = value
                else:
                    parent.insert(index, value)
            else:
                if kind == "replace" and key not in parent:
                    raise KeyError(key)
                parent[key] = value
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"{kind} {path}: {e}") from None
    return doc
