"""WebSocketConfig.from_env: STABILIZER_* text parsed by each field's type; an empty value,
or a word for None where None is not "no limit", is refused with the variable's name."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from stabilizer.config import HeartbeatType, MemoryEvictionPolicy, WebSocketConfig
from stabilizer.errors import ConfigError
from tests.support.redis_server import EXTERNAL_URL_ENV

ROOT = Path(__file__).resolve().parents[2]
KEY_A = "a" * 16
KEY_B = "b" * 32


def test_from_env_parses_every_kind_of_type() -> None:
    config = WebSocketConfig.from_env(
        {
            "STABILIZER_HEARTBEAT_INTERVAL": "12.5",
            "STABILIZER_HEARTBEAT_TIMEOUT": "40",
            "STABILIZER_HEARTBEAT_TYPE": "CUSTOM",
            "STABILIZER_MAX_CONNECTIONS": "500",
            "STABILIZER_MAX_MESSAGE_SIZE": " 2048 ",
            "STABILIZER_RECONNECT_TOKEN_TTL": "90",
            "STABILIZER_ENABLE_RECONNECT": "off",
            "STABILIZER_ENABLE_METRICS": "Yes",
            "STABILIZER_LOG_LEVEL": "debug",
            "STABILIZER_MEMORY_EVICTION_POLICY": "FIFO",
            "STABILIZER_TOKEN_SECRET": f"{KEY_B}, {KEY_A},",
            "STABILIZER_REDIS_URL": "redis://cache:6379/1",
            "STABILIZER_NODE_ID": "web-7",
        }
    )
    assert config.heartbeat_interval == 12.5
    assert config.heartbeat_timeout == 40.0
    assert config.heartbeat_type is HeartbeatType.CUSTOM
    assert config.max_connections == 500
    assert config.max_message_size == 2048
    assert config.reconnect_token_ttl == timedelta(seconds=90)
    assert config.enable_reconnect is False
    assert config.enable_metrics is True
    assert config.log_level == "DEBUG"
    assert config.memory_eviction_policy is MemoryEvictionPolicy.FIFO
    assert config.token_keys == (KEY_B, KEY_A)
    assert config.redis_url == "redis://cache:6379/1"
    assert config.node_id == "web-7"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on"])
def test_from_env_true_spellings(raw: str) -> None:
    assert WebSocketConfig.from_env({"STABILIZER_ENABLE_METRICS": raw}).enable_metrics is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF"])
def test_from_env_false_spellings(raw: str) -> None:
    env = {"STABILIZER_ENABLE_RECONNECT": raw}
    assert WebSocketConfig.from_env(env).enable_reconnect is False


@pytest.mark.parametrize(("raw", "spread"), [("1", True), ("off", False)])
def test_from_env_reads_the_optional_spread_switch(raw: str, spread: bool | None) -> None:
    env = {"STABILIZER_REDIS_SPREAD_KEYS": raw}
    assert WebSocketConfig.from_env(env).redis_spread_keys is spread


@pytest.mark.parametrize("bad", ["maybe", 1, "yes"])
def test_the_spread_switch_is_a_bool_or_none(bad: object) -> None:
    with pytest.raises(ConfigError, match="redis_spread_keys"):
        WebSocketConfig(redis_spread_keys=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="REDIS_SPREAD_KEYS"):
        WebSocketConfig.from_env({"STABILIZER_REDIS_SPREAD_KEYS": "maybe"})


@pytest.mark.parametrize("raw", ["none", "None", "NULL", " null "])
def test_from_env_none_for_optional_ints(raw: str) -> None:
    env = {"STABILIZER_MAX_CONNECTIONS": raw, "STABILIZER_MAX_TOTAL_MEMORY": raw}
    config = WebSocketConfig.from_env(env)
    assert config.max_connections is None
    assert config.max_total_memory is None


def test_from_env_ignores_variables_without_the_prefix() -> None:
    config = WebSocketConfig.from_env({"PATH": "/bin", "NUM_SHARDS": "0", "STABILIZERX": "1"})
    assert config == WebSocketConfig()


def test_from_env_with_empty_environ_gives_defaults() -> None:
    assert WebSocketConfig.from_env({}) == WebSocketConfig()


def test_from_env_unknown_variable_raises() -> None:
    with pytest.raises(ConfigError, match="STABILIZER_HEARTBEAT_INTERVALL"):
        WebSocketConfig.from_env({"STABILIZER_HEARTBEAT_INTERVALL": "5"})


def test_from_env_overrides_win() -> None:
    config = WebSocketConfig.from_env(
        {"STABILIZER_NUM_SHARDS": "8", "STABILIZER_NAMESPACE": "env"}, num_shards=4
    )
    assert config.num_shards == 4
    assert config.namespace == "env"


def test_from_env_an_override_can_fix_an_invalid_variable() -> None:
    config = WebSocketConfig.from_env({"STABILIZER_NUM_SHARDS": "0"}, num_shards=2)
    assert config.num_shards == 2


def test_from_env_does_not_read_a_variable_an_override_replaces() -> None:
    """The CLI's --redis-url wins over the replicas' variables, even an empty one."""
    config = WebSocketConfig.from_env({"STABILIZER_REDIS_URL": ""}, redis_url="redis://h/0")
    assert config.redis_url == "redis://h/0"
    with pytest.raises(ConfigError, match="STABILIZER_REDIS_URLS"):
        WebSocketConfig.from_env({"STABILIZER_REDIS_URLS": ""}, redis_url="redis://h/0")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABILIZER_NUM_SHARDS", "3")
    assert WebSocketConfig.from_env().num_shards == 3


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("STABILIZER_HEARTBEAT_INTERVAL", "soon"),
        ("STABILIZER_HEARTBEAT_INTERVAL", "none"),
        ("STABILIZER_HEARTBEAT_INTERVAL", "-3"),
        ("STABILIZER_NUM_SHARDS", "1.5"),
        ("STABILIZER_NUM_SHARDS", "none"),
        ("STABILIZER_NUM_SHARDS", "0"),
        ("STABILIZER_MAX_CONNECTIONS", "ten"),
        ("STABILIZER_MAX_CONNECTIONS", "0"),
        ("STABILIZER_ENABLE_RECONNECT", "maybe"),
        ("STABILIZER_ENABLE_RECONNECT", ""),
        ("STABILIZER_RECONNECT_TOKEN_TTL", "an hour"),
        ("STABILIZER_RECONNECT_TOKEN_TTL", "0"),
        ("STABILIZER_HEARTBEAT_TYPE", "pong"),
        ("STABILIZER_LOG_LEVEL", "loud"),
        ("STABILIZER_TOKEN_SECRET", "short"),
        ("STABILIZER_TOKEN_SECRET", ","),
        ("STABILIZER_REDIS_URL", "http://x"),
    ],
)
def test_from_env_bad_value_raises_config_error(key: str, raw: str) -> None:
    with pytest.raises(ConfigError):
        WebSocketConfig.from_env({key: raw})


def test_from_env_infinite_ttl_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        WebSocketConfig.from_env({"STABILIZER_RECONNECT_TOKEN_TTL": "inf"})


# ------------------------------------------------------------ empty values and words for None

FIELDS = [name.upper() for name in WebSocketConfig.__dataclass_fields__]


@pytest.mark.parametrize("raw", ["", " ", "\t\n"])
@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_value_is_refused_with_the_variable_and_how_to_get_the_default(
        field: str, raw: str) -> None:
    """`${REDIS_URL}` unset in a compose file: STABILIZER_REDIS_URL="" made each replica run
    on the in-process backend, alone; an empty max_channels_per_connection lifted its limit,
    an empty token_secret fell back to the key stored in Redis."""
    with pytest.raises(ConfigError, match=f"STABILIZER_{field} is empty.*unset it"):
        WebSocketConfig.from_env({f"STABILIZER_{field}": raw})


@pytest.mark.parametrize("field", ["REDIS_URL", "TOKEN_SECRET", "NODE_ID", "REDIS_SPREAD_KEYS"])
@pytest.mark.parametrize("raw", ["none", "None", "NULL", "null"])
def test_a_word_for_none_is_refused_where_none_is_not_no_limit(field: str, raw: str) -> None:
    """What a template writes for a missing value ("None", "null") must not pass for the
    default: for redis_url it would split the cluster into single in-process nodes."""
    with pytest.raises(ConfigError, match=f"STABILIZER_{field}.*unset it"):
        WebSocketConfig.from_env({f"STABILIZER_{field}": raw})


@pytest.mark.parametrize("field", ["MAX_CONNECTIONS", "MAX_MEMORY_PER_CONNECTION",
                                   "MAX_TOTAL_MEMORY", "MAX_CLUSTER_CONNECTIONS",
                                   "RATE_LIMIT_MESSAGES", "MAX_CONNECTIONS_PER_USER",
                                   "MAX_CHANNELS_PER_CONNECTION"])
def test_none_turns_a_limit_off(field: str) -> None:
    config = WebSocketConfig.from_env({f"STABILIZER_{field}": "none"})
    assert getattr(config, field.lower()) is None


def test_the_channel_limit_stays_128_unless_turned_off_explicitly() -> None:
    assert WebSocketConfig.from_env({}).max_channels_per_connection == 128
    env = {"STABILIZER_MAX_CHANNELS_PER_CONNECTION": "null"}
    assert WebSocketConfig.from_env(env).max_channels_per_connection is None
    with pytest.raises(ConfigError):
        WebSocketConfig.from_env({"STABILIZER_MAX_CHANNELS_PER_CONNECTION": ""})


def test_literal_words_stay_values_of_fields_that_are_not_optional() -> None:
    env = {"STABILIZER_COMPRESSION": "none", "STABILIZER_NAMESPACE": "null"}
    config = WebSocketConfig.from_env(env)
    assert (config.compression, config.namespace) == ("none", "null")


# ------------------------------------------------------------------ tooling variables

def test_the_suites_redis_variable_does_not_stop_the_app() -> None:
    """The README told developers to export STABILIZER_TEST_REDIS_URL; from_env (the quick
    start's app, the CLI, the e2e replicas) then refused to start in that shell."""
    env = {EXTERNAL_URL_ENV: "redis://127.0.0.1:6379/0", "STABILIZER_NAMESPACE": "chat"}
    assert WebSocketConfig.from_env(env).namespace == "chat"


def _prefixed_names(path: Path) -> set[str]:
    return set(re.findall(r"\bSTABILIZER_[A-Z0-9_]+", path.read_text(errors="replace")))


def test_every_stabilizer_variable_the_project_names_is_a_setting() -> None:
    """Tooling variables take another prefix, so that a shell set up as the README says runs
    the app and the CLI; only tests of typo detection name unknown ones (not scanned)."""
    fields = set(WebSocketConfig.__dataclass_fields__)
    scanned = [ROOT / "README.md", ROOT / "compose.yaml", ROOT / "scripts" / "test",
               ROOT / ".ci" / "run", ROOT / "tests" / "conftest.py"]
    for folder in ("docs", "examples", "bench", "tests/support", "tests/e2e", "tests/faults",
                   "tests/integration"):
        scanned += [path for path in (ROOT / folder).rglob("*")
                    if path.suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".conf")]
    unknown = {f"{path.relative_to(ROOT)}: {name}" for path in scanned
               for name in _prefixed_names(path) if name[len("STABILIZER_"):].lower()
               not in fields}
    assert not unknown, sorted(unknown)


def test_a_misspelt_setting_is_still_refused_and_the_right_name_suggested() -> None:
    with pytest.raises(ConfigError,
                       match=r"STABILIZER_HISTORY_SIZES .*did you mean STABILIZER_HISTORY_SIZE\?"):
        WebSocketConfig.from_env({"STABILIZER_HISTORY_SIZES": "100"})
