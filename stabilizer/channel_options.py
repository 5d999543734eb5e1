"""Channel options per namespace: history, presence and who may publish, chosen by the
longest group-name prefix that names them (``WebSocketConfig.channel_namespaces``).

Every replica and every Emitter reads them from its config, so a group is treated the same
way wherever it is sent to; a group no prefix names gets ``ChannelOptions()``: the global
behaviour (history as ``history_size`` says, presence, publishing through ``on_publish``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Final, Literal, TypeAlias

from stabilizer.errors import ConfigError, PresenceDisabledError

PublishMode: TypeAlias = Literal["hook", "members", "nobody"]
PUBLISH_MODES: Final = ("hook", "members", "nobody")
MAX_PREFIX_LENGTH: Final = 256  # a group name's longest


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """How the groups of one namespace behave.

    ``history``: False sends its groups' messages live, never into history, even with
    ``history_size > 0`` (nothing is replayed on a resume; the membership is kept).
    ``presence``: False refuses presence metadata and presence queries for its groups.
    ``publish``: who may publish from a v2 client: ``"hook"`` as the ``on_publish`` hook
    decides (refused without one), ``"members"`` members of the channel only (then the
    hook, if set), ``"nobody"`` no client (the server's own sends still go).

    Raises:
        ConfigError: a value of another type, or an unknown publish mode.
    """

    history: bool = True
    presence: bool = True
    publish: PublishMode = "hook"

    def __post_init__(self) -> None:
        for name in ("history", "presence"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ChannelOptions.{name} must be True or False, got "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.publish, str) or self.publish not in PUBLISH_MODES:
            raise ConfigError(f"ChannelOptions.publish must be one of {list(PUBLISH_MODES)}, "
                              f"got {self.publish!r}")


GLOBAL: Final = ChannelOptions()
_OPTION_NAMES: Final = frozenset(f.name for f in fields(ChannelOptions))


class ChannelNamespaces(Mapping[str, ChannelOptions]):
    """Namespace prefixes and their options: a read-only, hashable mapping that answers
    which options a group has (longest matching prefix first)."""

    __slots__ = ("_items", "_longest_first")

    def __init__(self, items: Mapping[str, ChannelOptions] | None = None) -> None:
        self._items: dict[str, ChannelOptions] = dict(items or {})
        self._longest_first = sorted(self._items.items(), key=lambda kv: -len(kv[0]))

    def __getitem__(self, prefix: str) -> ChannelOptions:
        return self._items[prefix]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"ChannelNamespaces({self._items!r})"

    def options_for(self, group: str) -> ChannelOptions:
        """The options of `group`: those of the longest prefix it starts with, else GLOBAL."""
        for prefix, options in self._longest_first:
            if group.startswith(prefix):
                return options
        return GLOBAL


def require_presence(options: ChannelOptions, group: str) -> None:
    """Check that `group` (with `options`) has presence.

    Raises:
        PresenceDisabledError: its namespace turns presence off.
    """
    if not options.presence:
        raise PresenceDisabledError(f"group {group!r} has no presence: its namespace in "
                                    "channel_namespaces turns presence off")


def check_namespaces(value: object) -> ChannelNamespaces:
    """Return `value` (a mapping of prefix -> ChannelOptions, or of prefix -> a dict of
    ChannelOptions fields) as ChannelNamespaces.

    Raises:
        ConfigError: not a mapping, a prefix that is no string of at most 256 characters,
            or options that are neither ChannelOptions nor a dict of its fields.
    """
    if isinstance(value, ChannelNamespaces):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"channel_namespaces must be a mapping of group-name prefix to "
                          f"ChannelOptions, got {type(value).__name__}")
    checked: dict[str, ChannelOptions] = {}
    for prefix, options in value.items():
        if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_LENGTH:
            raise ConfigError(f"channel_namespaces: a prefix must be a string of at most "
                              f"{MAX_PREFIX_LENGTH} characters, got {prefix!r}")
        checked[prefix] = _options(prefix, options)
    return ChannelNamespaces(checked)


def _options(prefix: str, options: object) -> ChannelOptions:
    if isinstance(options, ChannelOptions):
        return options
    if isinstance(options, Mapping):
        unknown = sorted(str(key) for key in options if key not in _OPTION_NAMES)
        if unknown:
            raise ConfigError(f"channel_namespaces[{prefix!r}]: unknown options {unknown}; "
                              f"known: {sorted(_OPTION_NAMES)}")
        try:
            return ChannelOptions(**options)
        except ConfigError as exc:
            raise ConfigError(f"channel_namespaces[{prefix!r}]: {exc}") from exc
    raise ConfigError(f"channel_namespaces[{prefix!r}] must be ChannelOptions (or a dict of "
                      f"its fields), got {type(options).__name__}")
