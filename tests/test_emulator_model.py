"""Unit and property tests of the emulator's model: snowflakes, permissions, mentions, validation, REST details."""

from __future__ import annotations

import datetime
import itertools
import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.api_errors import ApiError
from tests.discord_emulator.snowflake import SnowflakeFactory, snowflake_time
from tests.discord_emulator.validation import check_message


@given(st.integers(min_value=1, max_value=3000))
def test_snowflakes_strictly_grow_and_carry_the_time(count: int) -> None:
    factory = SnowflakeFactory()
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(milliseconds=1)
    ids = [factory.next() for _ in range(count)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    made = snowflake_time(ids[0])
    assert before <= made <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)


def _guild() -> tuple[m.Guild, m.Channel, m.Member]:
    owner = m.User(1 << 23, "owner")
    guild = m.Guild(1 << 22, "g", owner.id)
    guild.roles[guild.id] = m.Role(guild.id, guild.id, "@everyone", m.DEFAULT_EVERYONE_PERMISSIONS)
    channel = m.Channel(3 << 22, m.GUILD_TEXT, "general", guild.id)
    guild.channels[channel.id] = channel
    member = m.Member(guild.id, m.User(5 << 22, "alice"))
    guild.members[member.id] = member
    guild.members[owner.id] = m.Member(guild.id, owner)
    return guild, channel, member


bits = st.integers(min_value=0, max_value=(1 << 41) - 1)


@given(everyone=bits, role=bits, role_allow=bits, role_deny=bits, own_allow=bits, own_deny=bits)
def test_permission_overwrites_follow_discords_order(
    everyone: int, role: int, role_allow: int, role_deny: int, own_allow: int, own_deny: int
) -> None:
    guild, channel, member = _guild()
    guild.everyone.permissions = everyone
    guild.roles[7] = m.Role(7, guild.id, "r", role)
    member.role_ids = [7]
    channel.overwrites[7] = m.Overwrite(7, 0, role_allow, role_deny)
    channel.overwrites[member.id] = m.Overwrite(member.id, 1, own_allow, own_deny)
    perms = guild.permissions_in(channel, member)
    base = everyone | role
    if base & m.ADMINISTRATOR:
        assert perms == m.ALL_PERMISSIONS
        return
    expected = (((base & ~role_deny) | role_allow) & ~own_deny) | own_allow
    assert perms == (expected if expected & m.VIEW_CHANNEL else 0)
    assert guild.permissions_in(channel, guild.members[guild.owner_id]) == m.ALL_PERMISSIONS


def test_threads_use_their_parents_overwrites() -> None:
    guild, channel, member = _guild()
    thread = m.Channel(9 << 22, m.PUBLIC_THREAD, "t", guild.id, parent_id=channel.id, owner_id=member.id)
    guild.channels[thread.id] = thread
    channel.overwrites[member.id] = m.Overwrite(member.id, 1, 0, m.SEND_MESSAGES_IN_THREADS)
    assert not guild.permissions_in(thread, member) & m.SEND_MESSAGES_IN_THREADS
    assert guild.permissions_in(thread, member) & m.VIEW_CHANNEL


@given(content=st.text(max_size=2100))
def test_content_limit_is_2000_characters(content: str) -> None:
    if len(content) <= 2000:
        check_message({"content": content}, new_files=1)
    else:
        with pytest.raises(ApiError) as err:
            check_message({"content": content})
        assert err.value.code == 50035 and "2000 or fewer" in json.dumps(err.value.body())


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"content": ""}, 50006),
        ({"content": "   "}, 50006),
        ({"content": "hi", "username": "Clyde the bot"}, 50035),
        ({"content": "hi", "username": ""}, 50035),
        ({"embeds": [{"description": "x" * 4097}]}, 50035),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "x"}]}]}, 50035),
        ({"components": [{"type": 1, "components": [{"type": 2, "style": 1, "custom_id": "c" * 101}]}]}, 50035),
    ],
)
def test_bad_messages_get_discords_errors(payload: dict, code: int) -> None:
    with pytest.raises(ApiError) as err:
        check_message(payload, webhook=True)
    assert err.value.code == code


users = st.lists(st.sampled_from(["<@{a}>", "<@!{b}>", "<@{c}>", "@everyone", "<@&{r}>", "hi ", "\n"]), max_size=12)


@given(parts=users, parse=st.sets(st.sampled_from(["users", "roles", "everyone"])))
def test_allowed_mentions_decide_who_is_pinged(parts: list[str], parse: set[str]) -> None:
    emu = DiscordEmulator()
    a, b = emu.create_user("a"), emu.create_user("b")
    content = "".join(parts).format(a=a.id, b=b.id, c=999, r=12345)
    users, roles, everyone = emu.resolve_mentions(content, {"parse": sorted(parse)})
    mentioned = {a.id for p in parts if p == "<@{a}>"} | {b.id for p in parts if p == "<@!{b}>"}
    assert set(users) == (mentioned if "users" in parse else set())  # unknown user 999 never resolves
    assert roles == ([12345] if "roles" in parse and "<@&{r}>" in parts else [])
    assert everyone == ("everyone" in parse and "@everyone" in parts)
    only_a = emu.resolve_mentions(content, {"parse": [], "users": [str(a.id)]})[0]
    assert only_a == ([a.id] if a.id in mentioned else [])


async def test_rest_answers_with_exact_json_content_type_and_records_requests(emulator: DiscordEmulator) -> None:
    guild = await emulator.create_guild()
    channel = guild.channel("general")
    headers = {"Authorization": f"Bot {emulator.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.api_url}/channels/{channel.id}", headers=headers) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["name"] == "general"
        async with http.get(f"{emulator.api_url}/users/@me") as resp:
            assert resp.status == 401
        emulator.fail_next("POST", r"/channels/\d+/messages", 429, retry_after=0.25, count=1)
        async with http.post(f"{emulator.api_url}/channels/{channel.id}/messages", headers=headers, json={}) as resp:
            assert resp.status == 429 and resp.headers["Via"] and resp.headers["X-RateLimit-Remaining"] == "0"
            assert (await resp.json())["retry_after"] == 0.25
        async with http.post(f"{emulator.api_url}/channels/{channel.id}/messages", headers=headers, json={}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 50006
        async with http.get(f"{emulator.base_url}/attachments/1/2/nothing.png") as resp:
            assert resp.status == 404
    statuses = [(r.method, r.status) for r in emulator.requests]
    assert statuses == [("GET", 200), ("GET", 401), ("POST", 429), ("POST", 400), ("GET", 404)]
    assert emulator.requests[-1].path == "/attachments/1/2/nothing.png"
    assert emulator.requests[2].injected and not emulator.requests[3].injected


async def test_interaction_callbacks_follow_discords_rules(emulator: DiscordEmulator) -> None:
    guild = await emulator.create_guild()
    alice = await emulator.add_member(guild, "alice")
    api, auth = emulator.api_url, {"Authorization": f"Bot {emulator.token}"}
    command = {"name": "ping", "description": "Ping", "type": 1, "default_member_permissions": 8}
    commands = f"{api}/applications/{emulator.application_id}/commands"
    async with aiohttp.ClientSession() as http:
        async with http.put(commands, json=[command], headers=auth) as r:
            assert r.status == 200 and (await r.json())[0]["default_member_permissions"] == "8"
        bad = [{"name": "Bad Name", "description": "x"}]
        async with http.put(commands, json=bad, headers=auth) as r:
            assert r.status == 400 and (await r.json())["code"] == 50035

        handle = await emulator.slash_command(guild.channel("general"), alice, "ping")
        assert int(handle.payload["member"]["permissions"]) & 8 == 0  # alice is no admin
        followup = f"{api}/webhooks/{emulator.application_id}/{handle.token}"
        callback = f"{api}/interactions/{handle.id}/{handle.token}/callback"
        async with http.post(followup, json={"content": "too early"}) as r:
            assert r.status == 404 and (await r.json())["code"] == 10015
        async with http.post(callback, json={"type": 8, "data": {"choices": []}}) as r:
            assert r.status == 400  # autocomplete results only answer autocomplete interactions
        pong = {"type": 4, "data": {"content": "pong"}}
        async with http.post(callback, params={"with_response": "1"}, json=pong) as r:
            body = await r.json()
            assert body["resource"]["message"]["content"] == "pong" and body["interaction"]["id"] == str(handle.id)
        async with http.post(callback, json={"type": 4, "data": {"content": "again"}}) as r:
            assert r.status == 400 and (await r.json())["code"] == 40060
        emulator.token_lifetime = 0.0
        async with http.post(followup, json={"content": "too late"}) as r:
            assert r.status == 401 and (await r.json())["code"] == 50027

        emulator.interaction_deadline = 0.0
        late = await emulator.slash_command(guild.channel("general"), alice, "ping")
        async with http.post(f"{api}/interactions/{late.id}/{late.token}/callback", json={"type": 5}) as r:
            assert r.status == 404 and (await r.json())["code"] == 10062
    assert handle.content == "pong" and not late.acknowledged


async def test_webhook_rules(emulator: DiscordEmulator) -> None:
    guild = await emulator.create_guild()
    channel = guild.channel("general")
    thread = await emulator.create_thread(channel, "t")
    foreign = emulator.create_webhook(channel, "Other Bot")
    api, auth = emulator.api_url, {"Authorization": f"Bot {emulator.token}"}
    button = {"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": "x"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/webhooks/{foreign.id}/{foreign.token}", json={"components": [button]}) as r:
            assert r.status == 400  # interactive components need an application-owned webhook
        async with http.post(f"{api}/channels/{thread.id}/webhooks", json={"name": "x"}, headers=auth) as r:
            assert r.status == 400 and (await r.json())["code"] == 50024
        for i in range(14):  # the foreign webhook is the 15th
            async with http.post(f"{api}/channels/{channel.id}/webhooks", json={"name": f"h{i}"}, headers=auth) as r:
                assert r.status == 200
        async with http.post(f"{api}/channels/{channel.id}/webhooks", json={"name": "h15"}, headers=auth) as r:
            assert r.status == 400 and (await r.json())["code"] == 30007


def test_message_content_intent_blanks_other_peoples_guild_messages() -> None:
    from tests.discord_emulator.gateway import INTENT_GUILD_MESSAGES, INTENT_MESSAGE_CONTENT, GatewaySession

    emu = DiscordEmulator()
    user = emu.create_user("alice")
    channel = m.Channel(1 << 22, m.GUILD_TEXT, "general", 1 << 22)
    plain = m.Message(2 << 22, channel.id, channel.guild_id, user, "secret", "user")
    pinging = m.Message(3 << 22, channel.id, channel.guild_id, user, "hi bot", "user", mention_ids=[emu.bot_user.id])
    without = GatewaySession(0, 1, INTENT_GUILD_MESSAGES)
    with_content = GatewaySession(0, 1, INTENT_GUILD_MESSAGES | INTENT_MESSAGE_CONTENT)
    data = {"content": "secret", "embeds": [{"title": "t"}]}
    assert emu._content_filter(plain)(without, data)["content"] == ""
    assert emu._content_filter(plain)(without, data)["embeds"] == []
    assert emu._content_filter(plain)(with_content, data) is data
    assert emu._content_filter(pinging)(without, data) is data
