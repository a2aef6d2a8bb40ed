"""The gateway websocket: HELLO, heartbeats, IDENTIFY/READY, RESUME with replay, and sequenced dispatches.

One :class:`GatewaySession` per identified shard. A session outlives its socket so that a client which lost its
connection can RESUME and get every dispatch it missed, as on Discord. A client that closes with 1000/1001 ends its
session (Discord invalidates those).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator

log = logging.getLogger(__name__)

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11

# Intents the emulator honours when choosing what to dispatch.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

HISTORY_LIMIT = 2000  # dispatches kept per session for RESUME


@dataclass
class GatewayEvent:
    """Something that happened on the gateway, for tests: identify, resume, closed, disconnected, invalidated..."""

    kind: str
    shard_id: int | None
    session_id: str | None
    time: float
    detail: dict[str, Any] = field(default_factory=dict)


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, path: str) -> None:
        self.ws = ws
        self.path = path
        self.lock = asyncio.Lock()
        self.closed_by_server = False

    async def send(self, frame: str) -> bool:
        """Send one text frame; False when the socket is already gone."""
        if self.ws.closed:
            return False
        try:
            async with self.lock:
                await self.ws.send_str(frame)
        except (ConnectionResetError, RuntimeError):
            return False
        return True


class GatewaySession:
    """One shard's session: its sequence counter and the dispatches it was sent (for RESUME)."""

    def __init__(self, shard_id: int, shard_count: int, intents: int) -> None:
        self.session_id = secrets.token_hex(16)
        self.shard_id = shard_id
        self.shard_count = shard_count
        self.intents = intents
        self.seq = 0
        self.history: list[tuple[int, str]] = []
        self.conn: _Connection | None = None
        self.lock = asyncio.Lock()
        self.resumes = 0
        self.dispatched: list[tuple[str, dict[str, Any]]] = []

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.ws.closed

    def has_intent(self, intent: int) -> bool:
        return bool(self.intents & intent)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Sequence, remember and (when connected) send one dispatch."""
        async with self.lock:
            self.seq += 1
            frame = json.dumps({"op": DISPATCH, "t": event, "s": self.seq, "d": data})
            self.history.append((self.seq, frame))
            if len(self.history) > HISTORY_LIMIT:
                del self.history[: len(self.history) - HISTORY_LIMIT]
            self.dispatched.append((event, data))
            if self.conn is not None and not await self.conn.send(frame):
                self.conn = None


class Gateway:
    """Serves ``/gateway`` (and ``/gateway/resume``, the ``resume_gateway_url``) and routes dispatches to shards."""

    def __init__(self, emulator: DiscordEmulator, *, heartbeat_interval_ms: int = 41_250) -> None:
        self.emu = emulator
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, GatewaySession] = {}
        self.events: list[GatewayEvent] = []
        self.presences: list[dict[str, Any]] = []
        self._connections: set[_Connection] = set()

    # ---- routing ------------------------------------------------------------------------------------------------

    def session_for_shard(self, shard_id: int) -> GatewaySession | None:
        for session in self.sessions.values():
            if session.shard_id == shard_id:
                return session
        return None

    def sessions_for_guild(self, guild_id: int | None) -> list[GatewaySession]:
        """Sessions that get a guild's events: shard ``(guild_id >> 22) % shard_count``; DMs go to shard 0."""
        out = []
        for session in self.sessions.values():
            target = 0 if guild_id is None else (guild_id >> 22) % session.shard_count
            if session.shard_id == target:
                out.append(session)
        return out

    async def dispatch(
        self,
        event: str,
        data: dict[str, Any],
        *,
        guild_id: int | None,
        intent: int | None = None,
        transform: Callable[[GatewaySession, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> int:
        """Send an event to the sessions that should see it; returns how many got it."""
        sent = 0
        for session in self.sessions_for_guild(guild_id):
            if intent is not None and not session.has_intent(intent):
                continue
            payload = transform(session, data) if transform is not None else data
            await session.dispatch(event, payload)
            sent += 1
        return sent

    def _event(self, kind: str, session: GatewaySession | None, **detail: Any) -> None:
        self.events.append(
            GatewayEvent(
                kind,
                None if session is None else session.shard_id,
                None if session is None else session.session_id,
                asyncio.get_running_loop().time(),
                detail,
            )
        )
        self.emu.notify()

    # ---- the websocket ------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws, request.path)
        self._connections.add(conn)
        session: GatewaySession | None = None
        try:
            await conn.send(json.dumps({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await self._close(conn, 4002, "Decode error: the emulator takes JSON text frames only")
                    break
                try:
                    payload = json.loads(msg.data)
                    op = payload["op"]
                except (ValueError, KeyError, TypeError):
                    await self._close(conn, 4002, "Decode error")
                    break
                data = payload.get("d")
                if op == HEARTBEAT:
                    await conn.send(json.dumps({"op": HEARTBEAT_ACK}))
                elif op == IDENTIFY:
                    if session is not None:
                        await self._close(conn, 4005, "Already authenticated")
                        break
                    session = await self._identify(conn, data or {})
                elif op == RESUME:
                    session = await self._resume(conn, data or {})
                elif op == PRESENCE_UPDATE:
                    self.presences.append(data or {})
                elif op == REQUEST_MEMBERS and session is not None:
                    await self._members_chunk(session, data or {})
                elif session is None and op != HEARTBEAT:
                    await self._close(conn, 4003, "Not authenticated")
                    break
                else:
                    await self._close(conn, 4001, f"Unknown opcode {op}")
                    break
        finally:
            self._connections.discard(conn)
            if session is not None and session.conn is conn:
                session.conn = None
                code = ws.close_code
                if not conn.closed_by_server and code in (1000, 1001):
                    # A clean close from the client ends the session, as on Discord.
                    self.sessions.pop(session.session_id, None)
                    self._event("closed", session, code=code)
                else:
                    self._event("disconnected", session, code=code)
        return ws

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        conn.closed_by_server = True
        await conn.ws.close(code=code, message=reason.encode())

    async def _identify(self, conn: _Connection, data: dict[str, Any]) -> GatewaySession | None:
        if data.get("token") != self.emu.token:
            self._event("auth_failed", None)
            await self._close(conn, 4004, "Authentication failed.")
            return None
        shard = data.get("shard") or [0, 1]
        shard_id, shard_count = int(shard[0]), int(shard[1])
        if not 0 <= shard_id < shard_count:
            await self._close(conn, 4010, "Invalid shard.")
            return None
        old = self.session_for_shard(shard_id)
        if old is not None:
            # A new IDENTIFY for a shard replaces its old session; nobody can resume that one any more.
            self.sessions.pop(old.session_id, None)
        session = GatewaySession(shard_id, shard_count, int(data.get("intents") or 0))
        session.conn = conn
        self.sessions[session.session_id] = session
        self._event("identify", session, intents=session.intents, shard_count=shard_count, path=conn.path)
        await session.dispatch("READY", self.emu.ready_payload(session))
        for guild in self.emu.guilds_for_shard(shard_id, shard_count):
            await session.dispatch("GUILD_CREATE", self.emu.guild_create_payload(guild, session))
        self._event("ready", session)
        return session

    async def _resume(self, conn: _Connection, data: dict[str, Any]) -> GatewaySession | None:
        if data.get("token") != self.emu.token:
            await self._close(conn, 4004, "Authentication failed.")
            return None
        session = self.sessions.get(str(data.get("session_id")))
        seq = int(data.get("seq") or 0)
        if session is None or seq > session.seq or (session.history and seq < session.history[0][0] - 1):
            self._event("resume_refused", session, seq=seq)
            await conn.send(json.dumps({"op": INVALID_SESSION, "d": False}))
            return None
        async with session.lock:
            session.conn = conn
            missed = [frame for s, frame in session.history if s > seq]
            for frame in missed:
                await conn.send(frame)
            session.seq += 1
            frame = json.dumps({"op": DISPATCH, "t": "RESUMED", "s": session.seq, "d": {}})
            session.history.append((session.seq, frame))
            await conn.send(frame)
            session.resumes += 1
        self._event("resume", session, replayed=len(missed), seq=seq, path=conn.path)
        return session

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.emu.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.user.username.lower().startswith(str(data["query"]).lower())]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # ---- faults -------------------------------------------------------------------------------------------------

    def _connected(self, shard_id: int) -> GatewaySession:
        session = self.session_for_shard(shard_id)
        if session is None or session.conn is None:
            raise LookupError(f"shard {shard_id} has no connected gateway session (is the bot running?)")
        return session

    async def disconnect(self, shard_id: int, code: int = 4000) -> GatewaySession:
        """Close a shard's socket from the server side; the session stays resumable."""
        session = self._connected(shard_id)
        conn = session.conn
        assert conn is not None
        session.conn = None
        self._event("server_disconnect", session, code=code)
        await self._close(conn, code, "emulator disconnect")
        return session

    async def invalidate_session(self, shard_id: int, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION; unless resumable, the session is gone and the client must IDENTIFY afresh."""
        session = self._connected(shard_id)
        conn = session.conn
        assert conn is not None
        if not resumable:
            self.sessions.pop(session.session_id, None)
            session.conn = None
        self._event("invalidated", session, resumable=resumable)
        await conn.send(json.dumps({"op": INVALID_SESSION, "d": resumable}))

    async def request_reconnect(self, shard_id: int) -> None:
        """Send RECONNECT (op 7): the client drops the socket and RESUMEs."""
        session = self._connected(shard_id)
        assert session.conn is not None
        self._event("reconnect_requested", session)
        await session.conn.send(json.dumps({"op": RECONNECT, "d": None}))

    async def close_all(self) -> None:
        for conn in list(self._connections):
            conn.closed_by_server = True
            await conn.ws.close(code=1001, message=b"emulator shutting down")
