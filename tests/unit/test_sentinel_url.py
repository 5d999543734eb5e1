"""How a redis+sentinel:// URL is read: credentials as redis:// reads them (percent-decoded,
with an ACL user), bracketed IPv6 sentinels, and the sentinels' own credentials; and how
a Redis URL's secrets stay out of errors and the CLI's output."""

from __future__ import annotations

import pytest

from stabilizer import WebSocketConfig
from stabilizer.backends.redis.connect import (
    SentinelAddress,
    check_url,
    client_for,
    sentinel_address,
)
from stabilizer.cli.common import redacted
from stabilizer.errors import ConfigError


def test_the_credentials_are_percent_decoded_as_in_a_redis_url() -> None:
    address = sentinel_address("redis+sentinel://app%2F1:p%40ss%2Fw%3Ax@h:26379/mymaster")
    assert (address.username, address.password) == ("app/1", "p@ss/w:x")
    assert sentinel_address("redis+sentinel://:s%23cret@h/mymaster").password == "s#cret"
    bare = sentinel_address("redis+sentinel://h:26379/mymaster")
    assert (bare.username, bare.password) == (None, None)


def test_sentinels_service_and_db() -> None:
    assert sentinel_address("redis+sentinel://a:1,b,[::1]:26380,[fe80::2]/svc/3") == \
        SentinelAddress(hosts=(("a", 1), ("b", 26379), ("::1", 26380), ("fe80::2", 26379)),
                        service="svc", db=3)


def test_the_sentinels_own_credentials_are_query_parameters() -> None:
    address = sentinel_address(
        "redis+sentinel://:m@h/svc?sentinel_username=watch&sentinel_password=w%40tch%26x")
    assert (address.sentinel_username, address.sentinel_password) == ("watch", "w@tch&x")
    assert (address.username, address.password) == (None, "m")


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:26379",
    "redis+sentinel://h:port/svc",
    "redis+sentinel://h/svc/db",
    "redis+sentinel://[::1/svc",
    "redis+sentinel://h/svc?sentinel_pasword=x",
    "redis+sentinel://h/svc?sentinel_password=a&sentinel_password=b",
])
def test_a_url_that_does_not_say_what_it_means_is_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        sentinel_address(url)


def test_the_master_connections_carry_the_user_and_the_decoded_password() -> None:
    client, sentinels = client_for(WebSocketConfig(
        redis_url="redis+sentinel://app:p%40ss@[::1]:26379,h2/svc/2?sentinel_password=s%2F1"))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "p@ss", 2)
    first = sentinels[0].connection_pool.connection_kwargs
    assert (first["host"], first["port"], first["password"]) == ("::1", 26379, "s/1")


@pytest.mark.parametrize("url", [
    "redis://:s3cr3t#Pa55@redis:6379/0",  # a '#' ends the authority at the password
    "redis://user:s3cr3t/Pa55@127.0.0.1:1/0",  # so does a '/'
    "redis+sentinel://:s3cr3t/Pa55@h1:26379,h2:26379/mymaster",
    "redis+sentinel://app:s3cr3t#x@h1:26379/mymaster",
])
def test_a_url_that_does_not_parse_is_refused_without_its_password(url: str) -> None:
    """The parser's own message names what it found where the port should be, which for a
    password holding '#' or '/' (common in base64) is the password."""
    with pytest.raises(ConfigError) as info:
        check_url(url)  # (as the manager and the CLI check the URL before they connect)
    assert "s3cr3t" not in str(info.value)
    assert "percent-encode" in str(info.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:s3cr3t@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
    ("redis://user:s3cr3t/x@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
    ("redis://:s3cr3t#x@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
    ("redis+sentinel://h1,h2/svc?sentinel_password=s3cr3t", "redis+sentinel://h1,h2/svc"
                                                          "?sentinel_password=***"),
    ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
    # an '@' in a query value is no user info's end
    ("redis+sentinel://:masterpw@127.0.0.1:1/mymaster?sentinel_password=Hunter@2024-S3cret",
     "redis+sentinel://***@127.0.0.1:1/mymaster?sentinel_password=***"),
])
def test_the_cli_shows_a_url_without_its_secrets(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:1/0?foo=bar",
    "rediss://127.0.0.1:1/0?socket_timout=3",  # a typo
    "unix:///tmp/redis.sock?db=0&nonsense=1",
])
def test_an_option_redis_py_does_not_know_is_refused_before_anything_connects(
        url: str) -> None:
    """redis-py's URL parser passes unknown query keys through to the connection class,
    which raised a bare TypeError at the first call (the CLI printed a traceback)."""
    with pytest.raises(ConfigError, match="option"):
        check_url(url)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:1/0?client_name=web&protocol=3",
    "rediss://127.0.0.1:1/0?ssl_cert_reqs=none",
    "unix:///tmp/redis.sock?db=1",
])
def test_the_options_redis_py_knows_are_taken(url: str) -> None:
    check_url(url)


def test_an_at_sign_in_the_sentinels_password_parameter_is_no_credential() -> None:
    """The URL has no user info: an '@' in a query value was taken for one cut short."""
    address = sentinel_address("redis+sentinel://127.0.0.1:26379/mymaster"
                               "?sentinel_password=s3cr@t")
    assert (address.password, address.sentinel_password) == (None, "s3cr@t")


def test_a_password_with_a_question_mark_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as info:
        sentinel_address("redis+sentinel://:pa?ss3cr3t@h1:26379/mymaster")
    assert "ss3cr3t" not in str(info.value)
    assert "percent-encode" in str(info.value)
