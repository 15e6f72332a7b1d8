"""Function options, checked when the decorator runs: a bad value fails at import, not mid-run."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from .exception import InvalidError

# GPU names Modal accepts, with the memory that tells similar cards apart.
GPU_TYPES = ("T4", "L4", "A10G", "A10", "A100", "A100-40GB", "A100-80GB", "L40S", "H100", "H100!", "H200", "B200", "ANY")
MAX_TIMEOUT = 24 * 60 * 60
DEFAULT_TIMEOUT = 300.0
DEFAULT_SCALEDOWN = 60.0


@dataclasses.dataclass(frozen=True)
class Retries:
    """A retry policy: up to `max_retries` more attempts, waiting `initial_delay` seconds first and
    multiplying the wait by `backoff_coefficient` each time, up to `max_delay`."""

    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self):
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 10:
            raise InvalidError(f"Retries(max_retries=...) must be an integer from 0 to 10, got {self.max_retries!r}")
        if not 1.0 <= float(self.backoff_coefficient) <= 10.0:
            raise InvalidError(f"Retries(backoff_coefficient=...) must be from 1.0 to 10.0, got {self.backoff_coefficient!r}")
        if not 0.0 <= float(self.initial_delay) <= 60.0:
            raise InvalidError(f"Retries(initial_delay=...) must be from 0 to 60 seconds, got {self.initial_delay!r}")
        if not 1.0 <= float(self.max_delay) <= 60.0:
            raise InvalidError(f"Retries(max_delay=...) must be from 1 to 60 seconds, got {self.max_delay!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry)."""
        return min(self.max_delay, self.initial_delay * self.backoff_coefficient ** (attempt - 1))


def to_retries(value: Any) -> Retries | None:
    if value is None:
        return None
    if isinstance(value, Retries):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Modal: an int means that many retries, one second apart.
        return Retries(max_retries=value, backoff_coefficient=1.0, initial_delay=1.0)
    raise InvalidError(f"retries must be an int or runner.Retries(...), got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class GPU:
    """One GPU request: a type and a count. `fallbacks` are tried in order where the cloud allows."""

    type: str
    count: int = 1

    def __str__(self) -> str:
        return self.type if self.count == 1 else f"{self.type}:{self.count}"


_GPU_RE = re.compile(r"^([A-Za-z0-9!-]+?)(?::(\d+))?$")


def parse_gpu(value: Any) -> tuple[GPU, ...]:
    """`"H100"`, `"a100-80gb:2"`, `["H100", "A100-80GB"]` (fallbacks in order), or None."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise InvalidError("gpu=[] is empty: give a GPU type such as 'H100', or leave gpu unset")
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidError(f"gpu must be a string such as 'H100' or 'A100-80GB:2', got {type(item).__name__}")
        m = _GPU_RE.match(item.strip())
        name = m.group(1).upper() if m else ""
        if not m or name not in GPU_TYPES:
            raise InvalidError(
                f"invalid gpu {item!r}: use one of {', '.join(t for t in GPU_TYPES if t != 'ANY')} or 'any', "
                "optionally with a count such as 'H100:2'"
            )
        count = int(m.group(2) or 1)
        if not 1 <= count <= 8:
            raise InvalidError(f"invalid gpu {item!r}: the count must be from 1 to 8")
        parsed.append(GPU(name, count))
    return tuple(parsed)


def _pair(name: str, value: Any, kind: type) -> tuple[float, float | None] | None:
    """Modal's `cpu=` / `memory=`: a request, or a (request, limit) pair."""
    if value is None:
        return None
    req, limit = value if isinstance(value, tuple) else (value, None)
    for v in (req, limit):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or not math.isfinite(v)):
            unit = "CPUs" if name == "cpu" else "MiB"
            raise InvalidError(f"{name} must be a positive number of {unit} or a (request, limit) pair, got {value!r}")
    if limit is not None and limit < req:
        raise InvalidError(f"{name} limit {limit} is below its request {req}")
    return float(req), (float(limit) if limit is not None else None)


def _positive(name: str, value: Any, *, allow_none: bool = True, integer: bool = False, zero: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < 0 or (value == 0 and not zero):
        what = "a whole number" if integer else "a number"
        bound = "zero or more" if zero else "above zero"
        raise InvalidError(f"{name} must be {what} {bound}, got {value!r}")
    return value


def check_volumes(volumes: Any, what: str) -> tuple[tuple[str, Any], ...]:
    """`{"/data": Volume}` as sorted (path, Volume) pairs, each path checked."""
    from ._mounts import check_mount_path
    from ._volume import Volume

    if not isinstance(volumes, dict):
        raise InvalidError(f"{what} must be a dict of {{mount path: Volume}}")
    pairs = {}
    for path, volume in volumes.items():
        if not isinstance(volume, Volume):
            raise InvalidError(f"{what}[{path!r}] must be a runner.Volume, got {type(volume).__name__}")
        pairs[check_mount_path(path, what)] = volume
    paths = sorted(pairs)
    for a, b in zip(paths, paths[1:]):
        if b.startswith(a + "/"):
            raise InvalidError(f"{what}: {b!r} is inside {a!r}; mount volumes at paths that do not nest")
    return tuple((p, pairs[p]) for p in paths)


@dataclasses.dataclass(frozen=True)
class FunctionOptions:
    """Everything `@app.function` / `@app.cls` accept, validated."""

    image: Any = None
    gpu: tuple[GPU, ...] = ()
    cpu: tuple[float, float | None] | None = None
    memory: tuple[float, float | None] | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: Retries | None = None
    secrets: tuple = ()
    volumes: tuple = ()
    env: tuple = ()
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    scaledown_window: float = DEFAULT_SCALEDOWN
    serialized: bool = False

    @classmethod
    def build(cls, **kw: Any) -> FunctionOptions:
        from ._secret import Secret

        timeout = kw.get("timeout")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        _positive("timeout", timeout, allow_none=False)
        if timeout > MAX_TIMEOUT:
            raise InvalidError(f"timeout must be at most {MAX_TIMEOUT} seconds (24 hours), got {timeout!r}")
        secrets = tuple(kw.get("secrets") or ())
        for s in secrets:
            if not isinstance(s, Secret):
                raise InvalidError(f"secrets must be runner.Secret objects, got {type(s).__name__}")
        volumes = kw.get("volumes") or {}
        volumes = check_volumes(volumes, "volumes")
        env = kw.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidError("env must be a dict of str to str")
        min_c = _positive("min_containers", kw.get("min_containers") or 0, integer=True, zero=True)
        max_c = _positive("max_containers", kw.get("max_containers"), integer=True)
        buf_c = _positive("buffer_containers", kw.get("buffer_containers") or 0, integer=True, zero=True)
        if max_c is not None and min_c > max_c:
            raise InvalidError(f"min_containers ({min_c}) is above max_containers ({max_c})")
        window = kw.get("scaledown_window")
        window = DEFAULT_SCALEDOWN if window is None else _positive("scaledown_window", window, allow_none=False)
        image = kw.get("image")
        if image is not None:
            from ._image import Image

            if not isinstance(image, Image):
                raise InvalidError(f"image must be a runner.Image, got {type(image).__name__}")
        gpu = parse_gpu(kw.get("gpu"))
        return cls(
            image=image.for_function(gpu) if image is not None else None,
            gpu=gpu,
            cpu=_pair("cpu", kw.get("cpu"), float),
            memory=_pair("memory", kw.get("memory"), int),
            timeout=float(timeout),
            retries=to_retries(kw.get("retries")),
            secrets=secrets,
            volumes=volumes,
            env=tuple(sorted(env.items())),
            min_containers=min_c,
            max_containers=max_c,
            buffer_containers=buf_c,
            scaledown_window=float(window),
            serialized=bool(kw.get("serialized", False)),
        )

    def replace(self, **changes: Any) -> FunctionOptions:
        return dataclasses.replace(self, **changes)
