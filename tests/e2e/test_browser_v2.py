"""The browser client (GET /stabilizer.js) speaking protocol v2 in headless Chromium: against
real uvicorn serving tests/e2e/v2_app.py (JWT users), and against a scripted v2 server for
the exact frames on the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from tests.support.browser import Page, ScriptedServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SECRET = "v2-browser-e2e-secret-" + "b" * 24
WAIT_MS = 10_000  # the bound on every wait for the page; none is a sleep

# Loads the module, connects with protocol 2 and records every event. getToken fetches a
# token from the page's own server (POST /admin/token/alice), or, with `scripted`, returns
# "jwt-1", "jwt-2", ... (a `window.badToken` value instead, when set).
SETUP = """async ([url, options, scripted]) => {
  const { connect } = await import("/stabilizer.js");
  const plain = (v) => (v instanceof ArrayBuffer ? Array.from(new Uint8Array(v)) : v);
  window.log = [];
  window.tokenCalls = 0;
  const getToken = async () => {
    window.tokenCalls += 1;
    if (window.badToken !== undefined) return window.badToken;
    if (scripted) return `jwt-${window.tokenCalls}`;
    const reply = await fetch("/admin/token/alice", { method: "POST" });
    return (await reply.json()).token;
  };
  window.conn = connect(url, { ...options, protocol: 2, getToken });
  for (const event of ["state", "session", "message", "resume", "error", "unsubscribed"]) {
    window.conn.on(event, (...args) => window.log.push([event, ...args.map(plain)]));
  }
  window.conn.on("state", (state) => {
    const shown = document.getElementById("user");  // v2_app's page has one
    if (state === "open" && shown) shown.textContent = window.conn.userId;
  });
}"""


@pytest.fixture
def v2_server() -> Iterator[UvicornProcess]:
    env = {"V2_APP_JWT_SECRET": SECRET, "STABILIZER_HEARTBEAT_INTERVAL": "3600",
           "STABILIZER_HEARTBEAT_TIMEOUT": "3600"}
    with UvicornProcess(app="tests.e2e.v2_app:app", env=env) as proc:
        yield proc


class Tab:
    """A page running stabilizer.js with protocol 2."""

    def __init__(self, page: Page) -> None:
        self.page = page

    @classmethod
    async def open(cls, page: Page, base: str, url: str = "/ws", *, scripted: bool = False,
                   **options: Any) -> Tab:
        await page.goto(base + "/")
        await page.evaluate(SETUP, [url, options, scripted])
        return cls(page)

    async def until(self, expression: str, arg: Any = None) -> None:
        """Wait (bounded) until the JS `expression` (a function of `arg`) is truthy."""
        await self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS, polling=20)

    async def wait_state(self, state: str) -> None:
        await self.until("(s) => window.conn.state === s", state)

    async def value(self, expression: str) -> Any:
        return await self.page.evaluate(expression)

    async def events(self, kind: str) -> list[list[Any]]:
        log = await self.page.evaluate("window.log")
        return [entry[1:] for entry in log if entry[0] == kind]

    async def wait_events(self, kind: str, count: int) -> list[list[Any]]:
        await self.until("([k, n]) => window.log.filter((e) => e[0] === k).length >= n",
                         [kind, count])
        return await self.events(kind)


# --- real uvicorn, JWT users ----------------------------------------------------------------


async def test_a_page_connects_with_get_token_shows_its_user_and_resumes_after_reload(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    assert await page.text_content("#user") == "alice"
    device = await tab.value("window.conn.device")
    assert await tab.value("[window.conn.protocol, window.conn.clientId, window.tokenCalls]") \
        == [2, f"alice/{device}", 1]
    assert await tab.value("window.conn.expiresAt") > 0
    await tab.value("window.conn.send('hello')")
    await tab.value("window.conn.send({type: 'session', note: 'just data'})")
    reached = await asyncio.to_thread(v2_server.post, "/admin/send_user/alice",
                                      {"message": {"type": "ping", "from": "admin"}})
    assert reached == {"reached": 1}
    messages = await tab.wait_events("message", 3)
    assert sorted(message for message, _ in messages) == sorted([
        f"alice/{device}: hello",
        f'alice/{device}: {{"type":"session","note":"just data"}}',
        '{"type":"ping","from":"admin"}'])  # the application's JSON, never a control frame
    [[first]] = await tab.events("session")
    assert (first["user_id"], first["device"], first["resumed"]) == ("alice", device, False)

    # load the page again in the same tab: sessionStorage keeps the device and the token
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    [[again]] = await tab.events("session")
    assert (again["device"], again["client_id"], again["resumed"]) == (
        device, f"alice/{device}", True)
    assert await page.text_content("#user") == "alice"
    users = (await asyncio.to_thread(v2_server.get, "/admin/users/alice"))[1]
    assert users == [f"alice/{device}"]


# Runs window.conn.rpc(method, params, options); resolves to ["ok", result] or
# ["error", name, code, message, data] (the rejection, as plain data).
CALL = """async ([method, params, options]) => {
  try {
    return ["ok", await window.conn.rpc(method, params, options)];
  } catch (err) {
    return ["error", err.name, err.code ?? null, err.message, err.data ?? null];
  }
}"""


async def test_rpc_returns_values_and_errors_and_fails_calls_a_lost_socket_carried(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base, backoffBaseMs=10)
    queued = page.evaluate(CALL, ["add", {"a": 2, "b": 3}, {}])  # sent once open
    assert await queued == ["ok", 5]
    await tab.wait_state("open")
    device = await tab.value("window.conn.device")
    assert await page.evaluate(CALL, ["whoami", None, {}]) == [
        "ok", {"client_id": f"alice/{device}", "user_id": "alice", "params": None}]
    assert await page.evaluate(CALL, ["refuse", None, {}]) == [
        "error", "RPCError", "forbidden", "forbidden: not for you", {"needed": "admin"}]
    # the server's message alone, as the Python client's RPCError.message has it
    assert await page.evaluate(
        "window.conn.rpc('refuse').then(() => 'ok', (err) => err.detail)") == "not for you"
    assert (await page.evaluate(CALL, ["crash", None, {}]))[2] == "internal"
    assert (await page.evaluate(CALL, ["hold", None, {"timeoutMs": 200}]))[2] == "timeout"

    await page.evaluate("() => { window.holding = window.conn.rpc('hold')"
                        ".catch((err) => ['error', err.code]); }")
    async with asyncio.timeout(10):
        while (await asyncio.to_thread(v2_server.get, "/admin/held"))[1]["running"] < 2:
            await asyncio.sleep(0.02)
    await asyncio.to_thread(v2_server.post, "/admin/disconnect_user/alice?code=1012")
    assert await page.evaluate("window.holding") == ["error", "disconnected"]
    await tab.until("() => window.log.filter((e) => e[0] === 'state' && e[1] === 'open')"
                    ".length >= 2")
    assert await page.evaluate(CALL, ["add", {"a": 1, "b": 1}, {}]) == ["ok", 2]

    await page.evaluate("window.conn.close()")
    assert (await page.evaluate(CALL, ["add", {"a": 1, "b": 1}, {}]))[2] == "closed"


async def test_subscribe_routes_a_channels_messages_publish_and_resubscribe(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base, backoffBaseMs=10)
    await tab.wait_state("open")
    await page.evaluate("""async () => {
      window.room = [];
      await window.conn.subscribe("public:room", (data, position) =>
        window.room.push([data, position]));
    }""")
    assert await page.evaluate(
        "window.conn.subscribe('private:bob').then(() => 'ok', (err) => err.code)"
    ) == "forbidden"
    assert await page.evaluate(
        "window.conn.subscribe('nothing').then(() => 'ok', (err) => [err.code, err.data])"
    ) == ["no_such_channel", {"channel": "nothing"}]
    await page.evaluate("window.conn.publish('public:room', 'hi all')")
    await tab.until("() => window.room.length >= 1")
    assert await page.evaluate("window.room") == [['{"from":"alice","text":"hi all"}', None]]
    assert await tab.events("message") == []  # the subscription took it

    await asyncio.to_thread(v2_server.post, "/admin/disconnect_user/alice?code=1012")
    await tab.until("() => window.log.filter((e) => e[0] === 'state' && e[1] === 'open')"
                    ".length >= 2")

    async def subscribed_again() -> None:
        while (await asyncio.to_thread(v2_server.get, "/admin/asked"))[1] != [
                "public:room", "private:bob", "nothing", "public:room"]:
            await asyncio.sleep(0.02)

    async with asyncio.timeout(10):
        await subscribed_again()
    async with asyncio.timeout(10):
        while not (await asyncio.to_thread(v2_server.get, "/admin/groups/public:room"))[1]:
            await asyncio.sleep(0.02)
    await asyncio.to_thread(v2_server.post, "/admin/send_group/public:room",
                            {"message": "after the reconnect"})
    await tab.until("() => window.room.length >= 2")
    assert (await page.evaluate("window.room"))[1] == ["after the reconnect", None]

    await page.evaluate("window.conn.unsubscribe('public:room')")
    assert (await asyncio.to_thread(v2_server.get, "/admin/groups/public:room"))[1] == []


async def test_a_binary_message_to_a_channel_reaches_its_subscription_as_bytes(
    page: Page, v2_server: UvicornProcess
) -> None:
    # without history: the binary came as a plain binary frame naming no channel, and
    # went to the "message" listeners instead of the subscription's onMessage
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    await page.evaluate("""async () => {
      window.room = [];
      const plain = (v) => (v instanceof ArrayBuffer ? Array.from(new Uint8Array(v)) : v);
      await window.conn.subscribe("public:bytes", (data, position) =>
        window.room.push([plain(data), position]));
    }""")
    await asyncio.to_thread(v2_server.post, "/admin/send_group_bytes/public:bytes",
                            {"bytes": [0, 1, 255]})
    await asyncio.to_thread(v2_server.post, "/admin/send_group/public:bytes",
                            {"message": "then text"})
    await tab.until("() => window.room.length >= 2")
    assert await page.evaluate("window.room") == [[[0, 1, 255], None], ["then text", None]]
    assert await tab.events("message") == []  # the subscription took both


async def test_a_page_follows_a_channels_presence(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base, backoffBaseMs=10)
    await tab.wait_state("open")
    await page.evaluate("""async () => {
      window.changes = [];
      await window.conn.subscribe("presence:room", null, { presence: true });
      window.conn.presence("presence:room").onChange((joins, leaves) =>
        window.changes.push([Object.keys(joins), Object.keys(leaves)]));
    }""")
    names = ("() => { const p = window.conn.presence('presence:room').list();"
             " return JSON.stringify(Object.fromEntries(Object.entries(p).map(([k, v]) =>"
             " [k, v.map((i) => i.meta.name)]))); }")
    await tab.until(f"() => ({names})() === JSON.stringify({{alice: ['alice']}})")
    token = str(v2_server.post("/admin/token/bob")["token"])
    from stabilizer.client import connect

    async with connect(f"{v2_server.ws}/ws", protocol=2, get_token=lambda: token) as bob:
        await bob.subscribe("presence:room", presence=True)
        await tab.until(f"() => ({names})() === JSON.stringify({{alice: ['alice'], bob: ['bob']}})")
        await asyncio.to_thread(
            v2_server.post, f"/admin/update_presence/presence:room/{bob.client_id}",
            {"name": "Bob"})
        await tab.until(f"() => ({names})() === JSON.stringify({{alice: ['alice'], bob: ['Bob']}})")
    await tab.until(f"() => ({names})() === JSON.stringify({{alice: ['alice']}})")
    assert await page.evaluate("window.conn.presence('presence:room').count()") == 1
    changes = await page.evaluate("window.changes")
    if changes[0] == [["alice"], []]:  # the state, when it came after the reply's turn
        changes = changes[1:]
    assert changes == [[["bob"], []], [["bob"], ["bob"]], [[], ["bob"]]]
    await page.evaluate("window.conn.unsubscribe('presence:room')")
    assert await page.evaluate("window.conn.presence('presence:room')") is None


async def test_a_message_asking_for_an_ack_is_acknowledged_after_its_listeners(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    await page.evaluate("""() => window.conn.on("message", (data) => {
      if (data === "hold it") window.holding = true;   // no ack until this listener returns
    })""")
    client_id = await tab.value("window.conn.clientId")
    asked = asyncio.create_task(asyncio.to_thread(
        v2_server.post, f"/admin/send_acked/{client_id}?timeout=10", {"message": "hold it"}))
    async with asyncio.timeout(15):
        assert await asked == {"acked": True}
    assert await tab.value("window.holding") is True
    [[data, position]] = await tab.events("message")
    assert (data, position) == ("hold it", None)


async def test_a_server_close_reconnects_with_a_new_token(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base, backoffBaseMs=10)
    await tab.wait_state("open")
    device = await tab.value("window.conn.device")
    closed = await asyncio.to_thread(v2_server.post, "/admin/disconnect_user/alice?code=4003")
    assert closed == {"closed": 1}
    sessions = await tab.wait_events("session", 2)
    await tab.wait_state("open")
    assert [(s["device"], s["resumed"]) for [s] in sessions] == [(device, False),
                                                                 (device, True)]
    assert await tab.value("window.tokenCalls") == 2
    state, info = (await tab.events("state"))[1]
    assert (state, info["code"]) == ("reconnecting", 4003)


async def test_a_duplicated_tab_takes_its_own_device(
    page: Page, v2_server: UvicornProcess
) -> None:
    tab = await Tab.open(page, v2_server.base)
    await tab.wait_state("open")
    device = await tab.value("window.conn.device")
    stored = await tab.value("JSON.stringify(Object.entries(sessionStorage))")
    copy = await page.context.new_page()  # what "duplicate tab" does: a copy of the storage
    await copy.goto(v2_server.base + "/")
    await copy.evaluate("(s) => { for (const [k, v] of JSON.parse(s)) sessionStorage[k] = v }",
                        stored)
    twin = await Tab.open(copy, v2_server.base)
    await twin.wait_state("open")
    twin_device = await twin.value("window.conn.device")
    assert twin_device != device
    users = (await asyncio.to_thread(v2_server.get, "/admin/users/alice"))[1]
    assert sorted(users) == sorted([f"alice/{device}", f"alice/{twin_device}"])
    assert await tab.value("window.conn.state") == "open"  # the original was not replaced
    assert [state for state, _ in await tab.events("state")] == ["open"]


async def test_a_v2_page_does_not_open_on_a_plain_endpoint(
    page: Page, v2_server: UvicornProcess
) -> None:
    # Chromium itself refuses a handshake that chose no subprotocol: no open, code 1006
    tab = await Tab.open(page, v2_server.base, "/plain", maxAttempts=2, backoffBaseMs=10)
    await tab.wait_state("closed")
    [(state, info)] = await tab.events("state")
    assert (state, info["code"]) == ("closed", 1006)
    assert await tab.events("message") == []


# --- a scripted v2 server -------------------------------------------------------------------


class ScriptedV2Server(ScriptedServer):
    """A ScriptedServer that chooses the subprotocol stabilizer.v2 when offered."""

    async def __aenter__(self) -> ScriptedV2Server:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._http,
                                   subprotocols=[Subprotocol("stabilizer.v2")])
        return self


async def frame_of(ws: ServerConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        value = json.loads(await ws.recv())
    assert isinstance(value, dict)
    return value


def session_frame(token: str, device: str, *, resumed: bool = False, history: bool = False,
                  expires_at: float | None = 1795482348.0) -> str:
    return json.dumps({"type": "session", "protocol": 2, "client_id": f"alice/{device}",
                       "device": device, "user_id": "alice", "conn_id": token,
                       "node_id": "scripted", "resumed": resumed, "token": token,
                       "heartbeat_interval": 30.0, "history": history,
                       "expires_at": expires_at})

async def opened_with_history(page: Page, server: ScriptedV2Server
                              ) -> tuple[Tab, ServerConnection]:
    """A scripted tab (device tab-1) given a session with history by `server`, open."""
    tab = await Tab.open(page, server.base, f"{server.ws}/ws", scripted=True,
                         device="tab-1", backoffBaseMs=10)
    ws = await server.accept()
    await frame_of(ws)  # connect
    await ws.send(session_frame("r1", "tab-1", history=True))
    await tab.wait_state("open")
    return tab, ws


def path(ws: ServerConnection) -> str:
    assert ws.request is not None
    return ws.request.path


async def test_frames_on_the_wire_refresh_and_close_codes(page: Page) -> None:
    async with ScriptedV2Server() as server:
        tab = await Tab.open(page, server.base, f"{server.ws}/ws?room=1&token=leak",
                             scripted=True, device="tab-7", params={"tenant": "acme"},
                             backoffBaseMs=10)
        ws = await server.accept()
        assert path(ws) == "/ws?room=1"  # no credentials in the URL
        assert await frame_of(ws) == {"type": "connect", "device": "tab-7", "token": "jwt-1",
                                      "params": {"tenant": "acme"}}
        await tab.value("window.conn.send('early')")  # queued until the session opens
        await ws.send(session_frame("r1", "tab-7", history=True))
        assert await frame_of(ws) == {"type": "message", "data": "early"}
        await ws.send(json.dumps({"type": "ping", "timestamp": 1.0}))
        assert await frame_of(ws) == {"type": "pong"}
        await ws.send(json.dumps({"type": "message", "stream": "all", "offset": 4,
                                  "epoch": "e1", "data": "four"}))
        await ws.send(json.dumps({"type": "message", "data": "unsequenced"}))
        await ws.send(json.dumps({"type": "novelty"}))  # a later server's frame: ignored
        await ws.send(b"\x01\x02")
        assert await tab.wait_events("message", 3) == [
            ["four", {"stream": "all", "offset": 4, "epoch": "e1"}],
            ["unsequenced", None], [[1, 2], None]]

        await ws.send(json.dumps({"type": "refresh", "expires_at": 1795482348.0}))
        assert await frame_of(ws) == {"type": "refresh", "token": "jwt-2"}
        await ws.send(json.dumps({"type": "refreshed", "expires_at": 1795485948.0}))
        await tab.until("() => window.conn.expiresAt === 1795485948")

        await ws.close(4003, "credentials expired")  # reconnect with fresh credentials
        ws = await server.accept()
        assert await frame_of(ws) == {"type": "connect", "device": "tab-7", "token": "jwt-3",
                                      "reconnect_token": "r1", "positions": {"all": [4, "e1"]},
                                      "params": {"tenant": "acme"}}
        await ws.send(session_frame("r3", "tab-7", resumed=True, history=True))
        await tab.until("() => window.conn.session?.conn_id === 'r3'")
        await ws.close(4004, '{"retry_ms": 300}')  # the user's limit: after the advice
        ws = await server.accept()
        state, info = (await tab.events("state"))[-1]
        assert (state, info["code"], info["delay_ms"]) == ("reconnecting", 4004, 300)
        assert (await frame_of(ws))["token"] == "jwt-4"
        await ws.close(4501, "token already used")  # once more without the reconnect token
        ws = await server.accept()
        fresh = await frame_of(ws)
        assert "reconnect_token" not in fresh
        assert (fresh["device"], fresh["token"]) == ("tab-7", "jwt-5")
        await ws.send(session_frame("r5", "tab-7"))
        await tab.until("() => window.conn.session?.conn_id === 'r5'")
        await ws.close(4505, "credentials refused")  # final
        await tab.wait_state("closed")
        assert (await tab.events("state"))[-1] == ["closed", {"code": 4505,
                                                              "reason": "credentials refused"}]
        assert server.connections.empty()


async def opened_tab(page: Page, server: ScriptedV2Server) -> tuple[Tab, ServerConnection]:
    """A page connected as device tab-1 to the scripted server, its session open."""
    tab = await Tab.open(page, server.base, f"{server.ws}/ws", scripted=True,
                         device="tab-1", backoffBaseMs=10)
    ws = await server.accept()
    await frame_of(ws)  # connect
    await ws.send(session_frame("r1", "tab-1"))
    await tab.wait_state("open")
    return tab, ws


async def first_frame_afresh(tab: Tab, server: ScriptedV2Server,
                             ws: ServerConnection) -> dict[str, Any]:
    """Close `ws` (1012: come back), open a fresh session on the page's reconnect, have
    the page send 'after', and return the first frame the server reads after its connect
    (a subscribe the page made again would come before 'after')."""
    await ws.close(1012, '{"retry_ms": 10}')
    ws = await server.accept()
    await frame_of(ws)  # connect
    await ws.send(session_frame("r2", "tab-1"))
    await tab.value("window.conn.send('after')")
    return await frame_of(ws)


async def test_an_unsubscribe_made_while_the_subscribe_waits_for_its_reply_wins(
        page: Page) -> None:
    """The page does not await subscribe before it unsubscribes: the subscribe's reply,
    coming after, must not bring the subscription back (the server took the unsubscribe
    last). Before, the channel's onMessage kept its messages and a reconnect subscribed
    to it again."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        await page.evaluate("""() => {
          window.routed = [];
          window.subscribing = window.conn.subscribe("room", (data) => window.routed.push(data));
        }""")
        subscribe = await frame_of(ws)
        assert (subscribe["type"], subscribe["channel"]) == ("subscribe", "room")
        await page.evaluate("() => { window.leaving = window.conn.unsubscribe('room'); }")
        unsubscribe = await frame_of(ws)
        assert (unsubscribe["type"], unsubscribe["channel"]) == ("unsubscribe", "room")
        for request in (subscribe, unsubscribe):  # the server's order: as sent
            await ws.send(json.dumps({"type": "reply", "id": request["id"],
                                      "result": {"channel": "room"}}))
        await page.evaluate("Promise.all([window.subscribing, window.leaving])")
        await ws.send(json.dumps({"type": "message", "channel": "room", "data": "stray"}))
        await tab.until("() => window.routed.length || window.log.some((e) => "
                        "e[0] === 'message')")
        assert await tab.value("window.routed") == []  # no onMessage: it left
        assert await tab.events("message") == [["stray", None]]
        # a fresh session: its first frame is the page's message, no subscribe
        assert await first_frame_afresh(tab, server, ws) == {"type": "message", "data": "after"}


async def test_a_channel_the_server_ended_is_dropped_and_not_subscribed_again(
        page: Page) -> None:
    """The server takes the page out of a channel (an "unsubscribed" frame): the client
    forgets it, calls the subscription's onUnsubscribed, emits "unsubscribed", and a
    reconnect into a fresh session subscribes only to what it still has. Before, it kept
    the channel's onMessage and subscribed to it again."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_tab(page, server)
        await page.evaluate("""() => {
          window.routed = [];
          window.ended = [];
          window.subscribing = window.conn.subscribe("room", (data) => window.routed.push(data),
            { onUnsubscribed: (reason) => window.ended.push(reason) });
        }""")
        subscribe = await frame_of(ws)
        await ws.send(json.dumps({"type": "reply", "id": subscribe["id"],
                                  "result": {"channel": "room"}}))
        await page.evaluate("window.subscribing")
        await ws.send(json.dumps({"type": "unsubscribed", "channel": "room",
                                  "reason": "server"}))
        await tab.wait_events("unsubscribed", 1)
        assert await tab.value("window.ended") == ["server"]
        assert await tab.events("unsubscribed") == [
            [{"type": "unsubscribed", "channel": "room", "reason": "server"}]]
        await ws.send(json.dumps({"type": "message", "channel": "room", "data": "stray"}))
        await tab.wait_events("message", 1)
        assert await tab.value("window.routed") == []  # no onMessage: it was dropped
        # a fresh session: its first frame is the page's message, no subscribe
        assert await first_frame_afresh(tab, server, ws) == {"type": "message", "data": "after"}
        assert await tab.value("window.ended") == ["server"]


async def test_a_get_token_that_gives_no_string_ends_the_connection(page: Page) -> None:
    async with ScriptedV2Server() as server:
        await page.goto(server.base + "/")
        await page.evaluate("window.badToken = 42")
        tab = Tab(page)
        await page.evaluate(SETUP, [f"{server.ws}/ws", {}, True])
        await tab.wait_state("closed")
        [(state, info)] = await tab.events("state")
        assert (state, info["code"]) == ("closed", None)
        assert "getToken must give a non-empty string or null" in info["reason"]
        assert server.connections.empty()  # no socket was opened


async def test_v2_options_without_protocol_2_are_refused(page: Page) -> None:
    async with ScriptedServer() as server:
        await page.goto(server.base + "/")
        error = await page.evaluate("""async () => {
            const { connect } = await import("/stabilizer.js");
            try { connect("/ws", { getToken: () => "t" }); } catch (e) { return e.message; }
        }""")
        assert "need protocol: 2" in error


async def test_retry_advice_of_zero_gives_way_to_backoff_and_oversized_positions_stay_home(
        page: Page) -> None:
    """Advice is followed alone once; when the advised attempt fails too, the backoff goes
    on under it (advice of 0 made a tight reconnect loop). Positions over what a server
    takes (it would close with a final 1008) are not sent: the server replays from where
    the session began and the client drops what it had."""
    async with ScriptedV2Server() as server:
        await page.goto(server.base + "/")
        delays, sendable = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const options = {backoffBaseMs: 1000, backoffCapMs: 30000, maxAdviceMs: 60000};
            const advice = '{"retry_ms": 0}';
            const first = f.retryDelay(1013, advice, 1, options);
            const later = [];
            for (let i = 0; i < 50; i++) later.push(f.retryDelay(1013, advice, 6, options));
            const many = {};
            for (let i = 0; i < 1001; i++) many["g:" + i] = [1, "e"];
            const long = {};
            for (let i = 0; i < 300; i++) long["g:" + "x".repeat(250) + i] = [1, "e"];
            return [[first, Math.max(...later)],
                    [f.sendable({all: [1, "e"]}), f.sendable({}), f.sendable(many),
                     f.sendable(long)]];
        }""")
    assert delays[0] == 0
    assert delays[1] > 1000  # 50 draws of a backoff of up to 30 s: never all under 1 s
    assert sendable == [True, False, False, False]


async def test_a_resume_names_its_channels_and_the_server_ends_what_it_left_meanwhile(
        page: Page) -> None:
    """A kept session: the page names the channels it holds in the connect frame; the
    server tells it of one a leave ended while it was away (before the resume frame), and
    refuses the presence channel it subscribes to again only after that frame. Before, the
    connect frame named nothing, the page subscribed again before the resume frame came,
    and a refusal was never told to the subscription's onUnsubscribed."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_with_history(page, server)
        await page.evaluate("""() => {
          window.ended = [];
          const told = (channel) => (reason) => window.ended.push([channel, reason]);
          window.subscribing = Promise.all([
            window.conn.subscribe("room", null, { onUnsubscribed: told("room") }),
            window.conn.subscribe("stage", null, { presence: true,
                                                   onUnsubscribed: told("stage") })]);
        }""")
        for _ in range(2):
            request = await frame_of(ws)
            await ws.send(json.dumps({"type": "reply", "id": request["id"],
                                      "result": {"channel": request["channel"]}}))
        await page.evaluate("window.subscribing")
        await ws.close(1012, '{"retry_ms": 10}')
        ws = await server.accept()
        connect = await frame_of(ws)
        assert (connect["reconnect_token"], connect["channels"]) == ("r1", ["room", "stage"])
        await ws.send(session_frame("r2", "tab-1", resumed=True, history=True))
        await ws.send(json.dumps({"type": "unsubscribed", "channel": "room",
                                  "reason": "server"}))
        await tab.value("window.conn.send('before the resume frame')")
        assert await frame_of(ws) == {"type": "message", "data": "before the resume frame"}
        await ws.send(json.dumps({"type": "resume", "recovered": True, "replayed": 0,
                                  "failed": []}))
        again = await frame_of(ws)
        assert (again["type"], again["channel"], again["presence"]) == (
            "subscribe", "stage", True)
        await ws.send(json.dumps({"type": "reply", "id": again["id"], "error": {
            "code": "forbidden", "message": "not any more"}}))
        leave = await frame_of(ws)  # a refusal changes no membership: the page leaves
        assert (leave["type"], leave["channel"]) == ("unsubscribe", "stage")
        assert await page.evaluate("window.ended") == [["room", "server"]]  # (once it left)
        await ws.send(json.dumps({"type": "reply", "id": leave["id"],
                                  "result": {"channel": "stage"}}))
        await tab.until("() => window.ended.length >= 2")
        assert await page.evaluate("window.ended") == [["room", "server"],
                                                       ["stage", "forbidden"]]
        assert await page.evaluate("window.conn.presence('stage')") is None
        await ws.close(1012, '{"retry_ms": 10}')  # nothing left to name
        ws = await server.accept()
        assert "channels" not in await frame_of(ws)
        await page.evaluate("window.conn.close()")


async def test_a_message_of_a_channel_the_page_is_leaving_records_no_position(
        page: Page) -> None:
    """The page unsubscribes while a message of the channel is on its way (the server sent
    it before the leave). Before, that message recorded the channel's position again, the
    next resume counted the channel as held, and the page emitted "unsubscribed" for a
    channel it had left itself. After the unsubscribe's reply a message of the channel
    (the application joined the page again) records its position as any other."""
    async with ScriptedV2Server() as server:
        tab, ws = await opened_with_history(page, server)

        def message(offset: int, data: str) -> str:
            return json.dumps({"type": "message", "stream": "g:room", "offset": offset,
                               "epoch": "e", "data": data})

        async def answer(request: dict[str, Any]) -> None:
            await ws.send(json.dumps({"type": "reply", "id": request["id"],
                                      "result": {"channel": request["channel"]}}))

        await page.evaluate("() => { window.subscribing = window.conn.subscribe('room'); }")
        await answer(await frame_of(ws))
        await page.evaluate("window.subscribing")
        await ws.send(message(1, "first"))
        await tab.until("() => window.conn.positions['g:room']?.[0] === 1")
        await page.evaluate("() => { window.leaving = window.conn.unsubscribe('room'); }")
        leave = await frame_of(ws)
        assert (leave["type"], leave["channel"]) == ("unsubscribe", "room")
        await ws.send(message(2, "in flight"))
        await answer(leave)
        await page.evaluate("window.leaving")  # (after the message: frames come in order)
        assert await tab.value("window.conn.positions") == {}
        await ws.send(message(3, "joined again"))
        await tab.wait_events("message", 3)
        assert await tab.value("window.conn.positions") == {"g:room": [3, "e"]}
        await page.evaluate("window.conn.close()")


async def test_a_resume_names_the_channels_its_positions_leave_room_for(page: Page) -> None:
    """Positions and channels take at most MAX_RESUME_TEXT bytes of the connect frame
    together (as positions alone may); the names past it are left out. Before, only their
    count was bounded: 1,000 long names made a frame a server's max_message_size refused
    (1009, final)."""
    async with ScriptedV2Server() as server:
        await page.goto(server.base + "/")
        named, used, next_size, everything = await page.evaluate("""async () => {
            const f = await import("/stabilizer/frames.js");
            const size = (value) => new TextEncoder().encode(JSON.stringify(value)).length;
            const positions = {};
            for (let i = 0; i < 100; i++) positions["g:" + "p".repeat(200) + i] = [1, "e"];
            const channels = [];
            for (let i = 0; i < 400; i++) channels.push(`room:${i}:` + "\u00e9".repeat(240));
            const frame = f.connectFrame("d", "jwt", "s1.x", positions, null, channels);
            const named = frame.channels;
            const same = named.every((name, i) => name === channels[i]);
            const few = f.connectFrame("d", null, "s1.x", {}, null, ["b", "a"]).channels;
            return [same ? named.length : -1, size(frame.positions) + size(named),
                    size(channels[named.length]) + 1, few];
        }""")
    assert 0 < named < 400
    assert used <= 64 * 1024 - 1024 < used + next_size
    assert everything == ["b", "a"]
