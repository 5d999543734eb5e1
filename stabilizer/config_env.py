"""Environment values as the types of config fields: ``STABILIZER_<FIELD>`` text parsed by
the field's type hint (the constructor then validates the value).

A variable that is set says something: an empty one is refused rather than read as the
default (a compose file's ``${REDIS_URL}`` left unset would otherwise put each replica on
its own in-process backend). ``none`` and ``null`` mean None only for a limit, where None
is "no limit"; for any other optional setting the default is had by unsetting it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any, Final

from stabilizer.config_limits import OPTIONAL_LIMITS
from stabilizer.errors import ConfigError

ENV_PREFIX: Final = "STABILIZER_"
NONE_WORDS: Final = ("none", "null")


def settings_from_env(env: Mapping[str, str], hints: Mapping[str, object],
                      given: Collection[str] = ()) -> dict[str, Any]:
    """The settings the ``STABILIZER_*`` variables of `env` give, by field name; `hints`
    maps each field to its type hint; the variables of the fields `given` (overridden by
    the caller) are not read.

    Raises:
        ConfigError: for an unknown STABILIZER_ variable or a value that does not parse.
    """
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in hints:
            guess = difflib.get_close_matches(name, list(hints), n=1)
            hint = f"did you mean {ENV_PREFIX}{guess[0].upper()}? " if guess else ""
            raise ConfigError(f"unknown setting {key} (every {ENV_PREFIX}* variable is read "
                              f"as a setting); {hint}known: {sorted(hints)}")
        if name not in given:
            values[name] = parse_env_value(key, raw, hints[name])
    return values


def parse_env_value(key: str, raw: str, hint: object) -> Any:
    """The value of variable `key` (text `raw`) for a config field typed `hint`.

    Raises:
        ConfigError: the text is empty, or does not parse as that type.
    """
    text = raw.strip()
    if not text:
        raise ConfigError(f"{key} is empty; unset it for the default (an empty value is "
                          "never read as one)")
    if "None" in str(hint) and text.lower() in NONE_WORDS:
        if key[len(ENV_PREFIX):].lower() in OPTIONAL_LIMITS:
            return None  # the limit is off
        raise ConfigError(f"{key}={raw!r} is not a value of this setting; unset it for the "
                          "default (none and null only turn a limit off)")
    try:
        if hint is bool or str(hint) == "bool | None":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is timedelta:
            return float(text)  # validated (and converted) by the constructor
        if hint is float:
            return float(text)
        if hint is int or str(hint) == "int | None":
            return int(text)
        if "Mapping" in str(hint):
            return json.loads(text)  # validated (and converted) by the constructor
        if "tuple" in str(hint):
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{key}={raw!r} does not parse as {hint}") from exc
    return text
