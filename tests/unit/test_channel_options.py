"""Channel options per namespace: which prefix a group falls under, and the validation of
``WebSocketConfig.channel_namespaces`` (constructor, replace and from_env)."""

from __future__ import annotations

from typing import Any

import pytest

from stabilizer import ChannelOptions, ConfigError, WebSocketConfig

NO_HISTORY = ChannelOptions(history=False)
QUIET_ROOMS = ChannelOptions(presence=False, publish="nobody")


def config(**namespaces: Any) -> WebSocketConfig:
    return WebSocketConfig(history_size=10, channel_namespaces=namespaces)


def test_the_longest_matching_prefix_wins_and_unmatched_groups_get_the_global_options(
) -> None:
    settings = WebSocketConfig(channel_namespaces={
        "chat:": NO_HISTORY, "chat:quiet:": QUIET_ROOMS, "feed": ChannelOptions(
            publish="members")})
    assert settings.channel_options("chat:lobby") is NO_HISTORY
    assert settings.channel_options("chat:quiet:1") is QUIET_ROOMS
    assert settings.channel_options("feed-7").publish == "members"
    assert settings.channel_options("room-1") == ChannelOptions()
    assert settings.channel_options("cha") == ChannelOptions()  # shorter than every prefix


def test_an_empty_prefix_names_the_default_of_every_other_group() -> None:
    settings = WebSocketConfig(channel_namespaces={"": QUIET_ROOMS, "open:": ChannelOptions()})
    assert settings.channel_options("anything") is QUIET_ROOMS
    assert settings.channel_options("open:1") == ChannelOptions()


def test_history_is_kept_only_with_a_history_size_and_a_namespace_that_keeps_it() -> None:
    settings = config(**{"live:": NO_HISTORY})
    assert settings.keeps_history("room") is True
    assert settings.keeps_history("live:ticker") is False
    assert settings.replace(history_size=0).keeps_history("room") is False


def test_dicts_of_option_fields_become_channel_options() -> None:
    settings = config(**{"live:": {"history": False}, "ro:": {"publish": "nobody"}})
    assert settings.channel_options("live:x") == NO_HISTORY
    assert settings.channel_options("ro:x") == ChannelOptions(publish="nobody")


def test_the_config_stays_hashable_and_equal_to_a_copy() -> None:
    settings = config(**{"live:": NO_HISTORY})
    copy = settings.replace()
    assert copy == settings
    assert hash(copy) == hash(settings)
    assert dict(copy.channel_namespaces) == {"live:": NO_HISTORY}


@pytest.mark.parametrize(("options", "message"), [
    ({"history": "no"}, "history must be True or False"),
    ({"presence": 0}, "presence must be True or False"),
    ({"publish": "everyone"}, "publish must be one of"),
    ({"publish": None}, "publish must be one of"),
])
def test_bad_option_values_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChannelOptions(**options)
    with pytest.raises(ConfigError, match=f"channel_namespaces\\['x:'\\]: .*{message}"):
        config(**{"x:": options})


@pytest.mark.parametrize(("namespaces", "message"), [
    ([("x:", NO_HISTORY)], "must be a mapping"),
    ("x:", "must be a mapping"),
    ({1: NO_HISTORY}, "a prefix must be a string"),
    ({"x" * 257: NO_HISTORY}, "a prefix must be a string of at most 256"),
    ({"x:": True}, "must be ChannelOptions"),
    ({"x:": {"history": False, "replay": True}}, "unknown options \\['replay'\\]"),
])
def test_bad_namespaces_are_refused(namespaces: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebSocketConfig(channel_namespaces=namespaces)  # type: ignore[arg-type]


def test_from_env_reads_namespaces_as_json() -> None:
    settings = WebSocketConfig.from_env({
        "STABILIZER_HISTORY_SIZE": "5",
        "STABILIZER_CHANNEL_NAMESPACES": '{"live:": {"history": false}, '
                                         '"ro:": {"presence": false, "publish": "nobody"}}'})
    assert settings.channel_options("live:1") == NO_HISTORY
    assert settings.channel_options("ro:1") == QUIET_ROOMS


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", "does not parse"),
    ('["live:"]', "must be a mapping"),
    ('{"live:": {"history": "off"}}', "history must be True or False"),
])
def test_from_env_refuses_bad_namespaces(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebSocketConfig.from_env({"STABILIZER_CHANNEL_NAMESPACES": raw})
