"""Environment values as the types of config fields: ``STABILIZER_<FIELD>`` text parsed by
the field's type hint (the constructor then validates the value)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from stabilizer.errors import ConfigError


def parse_env_value(key: str, raw: str, hint: object) -> Any:
    """The value of variable `key` (text `raw`) for a config field typed `hint`.

    Raises:
        ConfigError: the text does not parse as that type.
    """
    text = raw.strip()
    optional = "None" in str(hint)
    if optional and text.lower() in ("", "none", "null"):
        return None
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
