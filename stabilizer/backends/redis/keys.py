"""The Redis key layout of one namespace: every key and channel the backend uses, in one place.

``{ns}`` is the namespace inside a hash tag, so every key of a standalone script lands in one
slot of a Redis Cluster. With ``presence_buckets`` > 1, presence, the per-node sets and the
per-node channels are spread over buckets tagged ``{ns:<b>}``.

With ``spread`` (the default on a Redis Cluster) each group's keys and channel carry the
group's own tag, ``{ns:g:<group>}``, and each client's session hash and group set the
client's, ``{ns:c:<client>}``: the group traffic is spread over the shards, and no script
spans two slots (spread.py runs the steps that used to be one script). A "}" in a name ends
the tag early, at the same place in every key of that name, so all of them still share
one slot; the fixed suffix after the tag keeps the names apart.

Client ids, user ids, group names and stream names are user input. They appear in keys only
after a fixed prefix that ends with ":" (``{ns}:s:<client>``, ``{ns}:cg:<client>``,
``{ns}:g:<group>``, ``{ns}:h:<stream>``, ``{ns}:gc:<group>``, ``{ns}:gp:<group>``,
``{ns}:gv:<group>``, ``{ns}:u:<user>``, ...), as hash fields, or as set members; they are
never used as a pattern (the CLI escapes them before SCAN MATCH). In the namespace layout a
"{" or "}" inside them cannot move a key to another slot, because the hash tag is the
*first* ``{...}`` of the key, and that is always the namespace's. Spread, a group name or
client id is the end of its own tag (after the fixed ``{ns:g:`` or ``{ns:c:``): it picks the
slot, the same one for every key of that name, and the fixed suffix behind the tag keeps
one kind of key from ever equalling another.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from stabilizer.backends.base import Presence
from stabilizer.pure.users import parse_info


def entry_of(presence: Presence) -> str:
    """The presence hash value of a connection: ``node|conn|since_us``, followed by
    ``|user_id`` for a user's connection (the user id comes last: it may hold "|").

    ``since_us`` (microseconds) orders two connections of one client made on two nodes
    (RESYNC: the newer one wins); milliseconds left ties between connects a millisecond
    apart.
    """
    entry = f"{presence.node_id}|{presence.conn_id}|{since_us(presence.since)}"
    return entry if presence.user_id is None else f"{entry}|{presence.user_id}"


def seat_of(presence: Presence, info: str, stamp: int | None = None) -> str:
    """The value of a connection in its user's hash: ``node|conn|since_us|info_json``
    (`stamp`: the since_us REGISTER stored for it, if it raised the connection's)."""
    since = since_us(presence.since) if stamp is None else stamp
    return f"{presence.node_id}|{presence.conn_id}|{since}|{info}"


def since_us(since: float) -> int:
    """Wall seconds as the integer microseconds entries hold."""
    return int(since * 1_000_000)


def _split(raw: bytes | str) -> tuple[str, str, float, str | None] | None:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    parts = text.split("|", 3)
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    try:
        since = int(parts[2]) / 1_000_000
    except (ValueError, OverflowError):  # not digits, or too many to be a time
        return None
    return parts[0], parts[1], since, parts[3] if len(parts) == 4 else None


def parse_entry(client_id: str, raw: bytes | str) -> Presence | None:
    """Parse ``node|conn|since_us[|user_id]``; None for anything malformed."""
    parts = _split(raw)
    if parts is None:
        return None
    node, conn, since, user = parts
    return Presence(client_id, node, conn, since, user or None)


def parse_position(raw: bytes) -> tuple[int, str] | None:
    """Parse a stored ``offset|epoch`` position; None if malformed."""
    offset, _, epoch = raw.decode("utf-8", "replace").partition("|")
    try:
        return int(offset), epoch
    except ValueError:
        return None


def parse_seat(user_id: str, client_id: str, raw: bytes | str) -> Presence | None:
    """Parse a user hash value ``node|conn|since_us|info_json``; None if malformed."""
    parts = _split(raw)
    if parts is None:
        return None
    node, conn, since, info = parts
    return Presence(client_id, node, conn, since, user_id, parse_info(info or ""))


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Names of the keys and channels of `namespace` (public: the CLI reads through it)."""

    namespace: str
    buckets: int = 1
    spread: bool = False
    # (made once: nearly every key starts with it, and a connect names several)
    _tag: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tag", f"{{{self.namespace}}}")

    @property
    def tag(self) -> str:
        """The namespace's hash tag: every key not spread over buckets starts with it."""
        return self._tag

    def group_tag(self, group: str) -> str:
        """The hash tag of `group`'s keys and channel (spread), else the namespace's."""
        return f"{{{self.namespace}:g:{group}}}" if self.spread else self.tag

    def client_tag(self, client_id: str) -> str:
        """The hash tag of `client_id`'s session and group set (spread), else the
        namespace's."""
        return f"{{{self.namespace}:c:{client_id}}}" if self.spread else self.tag

    def bucket_tag(self, bucket: int) -> str:
        """The hash tag of one presence bucket (the namespace's own with one bucket)."""
        return self.tag if self.buckets == 1 else f"{{{self.namespace}:{bucket}}}"

    @property
    def split_presence(self) -> bool:
        """True when presence and a client's group set live in different slots (presence
        buckets, or the spread layout): no script reads or changes both."""
        return self.buckets > 1 or self.spread

    def bucket_of(self, client_id: str) -> int:
        """Which presence bucket holds `client_id`."""
        if self.buckets == 1:
            return 0
        return zlib.crc32(client_id.encode("utf-8", "surrogatepass")) % self.buckets

    # --- presence and nodes (per bucket) ---------------------------------------------

    def presence(self, bucket: int) -> str:
        """Hash: client_id -> ``node|conn|since_us``."""
        return f"{self.bucket_tag(bucket)}:p"

    @property
    def slot_presence(self) -> str:
        """The presence hash as seen from the namespace's slot: the real one with one bucket,
        a key that stays empty otherwise (a script may only touch keys of one slot)."""
        return f"{self.tag}:p"

    def node_set_prefix(self, bucket: int) -> str:
        """Prefix of the node sets of one bucket (scripts append a node id)."""
        return f"{self.bucket_tag(bucket)}:nc:"

    def node_set(self, bucket: int, node_id: str) -> str:
        """Set: the clients `node_id` holds in one bucket (for reaping)."""
        return self.node_set_prefix(bucket) + node_id

    def node_channel_prefix(self, bucket: int) -> str:
        """Prefix of the per-node channels of one bucket (scripts append a node id)."""
        return f"{self.bucket_tag(bucket)}:n:"

    def node_channel(self, bucket: int, node_id: str) -> str:
        """Channel: direct messages and kicks for `node_id`."""
        return self.node_channel_prefix(bucket) + node_id

    @property
    def nodes(self) -> str:
        """Sorted set: node_id -> liveness deadline (ms, Redis clock)."""
        return f"{self.tag}:nodes"

    @property
    def reaped(self) -> str:
        """Sorted set: node_id -> until when (ms, Redis clock) a reaper holds its claim on
        the node; the node reads it at each keepalive (it was reaped, perhaps alive)."""
        return f"{self.tag}:reaped"

    @property
    def node_reports(self) -> str:
        """Hash: node_id -> the node's latest report (JSON, see NodeReport), written with
        its keepalive and removed when it unregisters or is reaped."""
        return f"{self.tag}:nodereports"

    # --- users (the namespace's slot) ---------------------------------------------

    def user(self, user_id: str) -> str:
        """Hash: client_id -> ``node|conn|since_us|info_json``, one field per connection of
        the user."""
        return self.user_prefix + user_id

    @property
    def user_prefix(self) -> str:
        """Prefix of the user hashes (scripts append a user id)."""
        return f"{self.tag}:u:"

    @property
    def users(self) -> str:
        """Set: the ids of users with at least one connection."""
        return f"{self.tag}:users"

    @property
    def seats_here(self) -> bool:
        """True when presence and the user hashes share one slot, so one script keeps both
        (one presence bucket); otherwise a second script follows in the namespace's slot."""
        return self.buckets == 1

    # --- tokens -------------------------------------------------------------------

    def token(self, nonce: str) -> str:
        """String: a consumed token's marker (expires with the token)."""
        return f"{self.tag}:tok:{nonce}"

    @property
    def secret(self) -> str:
        """String: the shared signing key, created with SET NX (again after a restart)."""
        return f"{self.tag}:secret"

    @property
    def keyring(self) -> str:
        """Hash: every shared key a live token may be signed with -> until when (ms)."""
        return f"{self.tag}:keyring"

    # --- channels -----------------------------------------------------------------

    @property
    def broadcast_channel(self) -> str:
        """Channel every node subscribes to for broadcasts."""
        return f"{self.tag}:all"

    @property
    def events_channel(self) -> str:
        """Channel of cluster events (connect, disconnect, join, leave)."""
        return f"{self.tag}:events"

    def group_channel(self, group: str) -> str:
        """Channel of one group's messages."""
        if self.spread:
            return f"{self.group_tag(group)}:c"
        return f"{self.tag}:gc:{group}"

    def is_group_channel(self, channel: str) -> bool:
        """True for the name of a group's channel (any group) of this namespace."""
        if self.spread:
            return channel.startswith(f"{{{self.namespace}:g:") and channel.endswith(":c")
        return channel.startswith(f"{self.tag}:gc:")

    @property
    def sequenced_direct_prefix(self) -> str:
        """Prefix of the per-node channels of sequenced direct messages, in the namespace's
        slot (the same as node_channel_prefix with one bucket)."""
        return f"{self.tag}:n:"

    # --- groups, sessions, history (the namespace's slot) -------------------------

    def group(self, group: str) -> str:
        """Set: the members of `group`."""
        if self.spread:
            return f"{self.group_tag(group)}:m"
        return self.group_prefix + group

    @property
    def group_prefix(self) -> str:
        """Prefix of the group member sets (PRESENCE_LIB names the group presence keys and
        channels from it: ``g:`` becomes ``gp:``, ``gv:``, ``gc:``); not used when spread."""
        return f"{self.tag}:g:"

    def group_presence(self, group: str) -> str:
        """Hash: client_id -> the member's presence entry (pure/presence.py), for members
        that joined with metadata only."""
        if self.spread:
            return f"{self.group_tag(group)}:p"
        return f"{self.tag}:gp:{group}"

    def group_presence_version(self, group: str) -> str:
        """String: the version of the group's last presence change (while it has one)."""
        if self.spread:
            return f"{self.group_tag(group)}:v"
        return f"{self.tag}:gv:{group}"

    @property
    def group_key_bounds(self) -> tuple[str, str]:
        """What every group member set's key starts and ends with (the group name lies
        between)."""
        if self.spread:
            return f"{{{self.namespace}:g:", "}:m"
        return self.group_prefix, ""

    @property
    def group_key_pattern(self) -> str:
        """A SCAN MATCH pattern of every group member set's key (the namespace escaped)."""
        prefix, suffix = self.group_key_bounds
        return _escaped(prefix) + "*" + _escaped(suffix)

    def client_groups(self, client_id: str) -> str:
        """Set: the groups of `client_id`."""
        if self.spread:
            return f"{self.client_tag(client_id)}:g"
        return self.client_groups_prefix + client_id

    def leaving(self, client_id: str) -> str:
        """Set (spread only): the groups an ending session of `client_id` is still leaving;
        kept until every group is left, so that a sweep can finish what a dead node began.
        """
        return f"{self.client_tag(client_id)}:gl"

    def fence(self, client_id: str) -> str:
        """String (spread only): the token of a sweep that found `client_id` gone, which
        the client's next connection drops (spread_scripts.CLIENT_END)."""
        return f"{self.client_tag(client_id)}:sf"

    @property
    def client_groups_prefix(self) -> str:
        """Prefix of the per-client group sets."""
        return f"{self.tag}:cg:"

    def session(self, client_id: str) -> str:
        """Hash: a session's user data (``u:<key>``) and stream baselines (``p:<stream>``)."""
        if self.spread:
            return f"{self.client_tag(client_id)}:s"
        return self.session_prefix + client_id

    @property
    def session_prefix(self) -> str:
        """Prefix of the session hashes."""
        return f"{self.tag}:s:"

    @property
    def away(self) -> str:
        """Sorted set: client_id -> time its session ends (clients that left)."""
        return f"{self.tag}:away"

    def stream(self, stream: str) -> str:
        """Stream: history entries of `stream`, ids ``<offset>-0`` (a group's in the group's
        slot when spread; the others in the namespace's, next to the presence and user
        hashes their script reads)."""
        group = self._group_of(stream)
        if group is not None:
            return f"{self.group_tag(group)}:h"
        return f"{self.tag}:h:{stream}"

    def stream_meta(self, stream: str) -> str:
        """Hash: the offset and epoch of `stream`."""
        group = self._group_of(stream)
        if group is not None:
            return f"{self.group_tag(group)}:hm"
        return f"{self.tag}:hm:{stream}"

    def _group_of(self, stream: str) -> str | None:
        return stream[2:] if self.spread and stream.startswith("g:") else None


def _escaped(literal: str) -> str:
    """`literal` as a SCAN MATCH pattern that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in literal)
