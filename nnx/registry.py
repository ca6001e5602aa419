"""One lookup for every registry, so an unknown name fails the same way everywhere."""

from collections.abc import Mapping
from typing import Any

from nnx.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value nnx cannot use. The message names the value, the valid ones and the fix."""


def lookup(registry: Mapping[str, Any], kind: str, name: str) -> Any:
    """Returns registry[name], or raises ConfigError listing the valid names."""
    if isinstance(name, str) and name in registry:
        return registry[name]
    valid = ", ".join(sorted(registry))
    raise ConfigError(
        f"unknown {kind} {name!r}; valid {kind}s: {valid}. Pick one with `{kind}=<name>` on the command line."
    )


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to us


def is_number(value) -> bool:
    import math

    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check(ok: bool, key: str, value, rule: str, fix: str):
    """Raises ConfigError "<key>=<value> is invalid: <rule>. <fix>" unless ok."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}. {fix}")
