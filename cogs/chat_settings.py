"""/chat: the channel's scene, reply mode, sampler settings, greeting, and the context inspector."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.generation.base import SAMPLER_RANGES, SamplerError, SamplerParams
from bot.prompt import BuiltPrompt, PersonaSpec
from bot.storage import channels as channel_repo
from bot.storage import moderation as mod_repo
from bot.storage.models import ChannelSettings, Persona, ReplyMode
from cogs._group_cog import GroupCog
from cogs._permissions import require_persona_manager
from cogs.errors import CommandError

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

PREVIEW_CHARS = 900  # the embed field holds 1024 characters, fences included


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# No default_permissions: Discord applies them to a whole group, and /chat context is for everyone. The commands
# that change settings check Manage Channels (or the persona manager role) when they run.
@app_commands.guild_only()
class ChatGroup(app_commands.Group, name="chat", description="The persona chat in this channel"):
    def __init__(self, cog: ChatSettingsCog) -> None:
        super().__init__()
        self.cog = cog

    @property
    def bot(self) -> RPBot:
        return self.cog.bot

    async def _active(self, interaction: discord.Interaction) -> tuple[ChannelSettings, Persona]:
        channel = interaction.channel
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        async with self.bot.db.session() as session:
            active = await channel_repo.effective_persona(session, interaction.channel_id or 0, parent_id)
        if active is None:
            raise CommandError("No persona is active in this channel. Start one with /persona use.")
        return active

    async def _audit(self, interaction: discord.Interaction, action: str, **details: Any) -> None:
        async with self.bot.db.session() as session:
            await mod_repo.audit(
                session,
                interaction.guild_id,
                interaction.user.id,
                action,
                f"channel {interaction.channel_id}",
                **details,
            )

    @app_commands.command(name="reset", description="Start a new scene: earlier messages leave the prompt")
    async def reset(self, interaction: discord.Interaction) -> None:
        await require_persona_manager(interaction)
        settings, persona = await self._active(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.cog.new_scene(interaction, settings, persona)
        await self._audit(interaction, "chat.reset")
        await interaction.followup.send("A new scene begins.", ephemeral=True)

    @app_commands.command(name="mode", description="When the persona replies")
    @app_commands.describe(mode="mention: when mentioned, named or replied to; always: every message")
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="mention (when mentioned, named or replied to)", value="mention"),
            app_commands.Choice(name="always (every message; a burst gets one reply)", value="always"),
        ]
    )
    async def mode(self, interaction: discord.Interaction, mode: str) -> None:
        await require_persona_manager(interaction)
        settings, _persona = await self._active(interaction)
        async with self.bot.db.session() as session:
            await channel_repo.update_channel(
                session, settings.guild_id, settings.channel_id, reply_mode=ReplyMode(mode)
            )
        self.cog.changed(settings.channel_id)
        await self._audit(interaction, "chat.mode", mode=mode)
        await interaction.response.send_message(f"Reply mode: **{mode}**.", ephemeral=True)

    @app_commands.command(name="settings", description="Sampler settings for this channel (no option: show them)")
    @app_commands.describe(
        temperature="Randomness (0-5; default 0.8)",
        top_p="Nucleus sampling (0-1; default 0.9)",
        top_k="Top-k (0 = off)",
        min_p="Min-p (0-1; default 0.05)",
        repetition_penalty="Repetition penalty (1-3; default 1.1)",
        max_new_tokens="Longest reply in tokens",
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        temperature: app_commands.Range[float, 0.0, 5.0] | None = None,
        top_p: app_commands.Range[float, 0.0, 1.0] | None = None,
        top_k: app_commands.Range[int, 0, 1000] | None = None,
        min_p: app_commands.Range[float, 0.0, 1.0] | None = None,
        repetition_penalty: app_commands.Range[float, 1.0, 3.0] | None = None,
        max_new_tokens: app_commands.Range[int, 16, 4096] | None = None,
    ) -> None:
        settings, _persona = await self._active(interaction)
        given = {
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "min_p": min_p,
            "repetition_penalty": repetition_penalty,
            "max_new_tokens": max_new_tokens,
        }
        given = {k: v for k, v in given.items() if v is not None}
        current = dict(settings.sampler or {})
        if given:
            await require_persona_manager(interaction)
            merged = {**current, **given}
            limit = self.bot.settings.context_tokens // 2
            if merged.get("max_new_tokens", 0) > limit:
                raise CommandError(f"max_new_tokens can be at most {limit} (half of the {limit * 2}-token context).")
            try:
                SamplerParams().with_overrides({k: v for k, v in merged.items() if k != "max_new_tokens"})
            except SamplerError as exc:
                raise CommandError(str(exc)) from None
            async with self.bot.db.session() as session:
                await channel_repo.update_channel(session, settings.guild_id, settings.channel_id, sampler=merged)
            self.cog.changed(settings.channel_id)
            await self._audit(interaction, "chat.settings", **given)
            current = merged
        effective = {**SamplerParams().as_dict(), "max_new_tokens": self.bot.settings.max_new_tokens, **current}
        effective.pop("seed", None)
        lines = [
            f"**{name}**: {_fmt(effective[name])}" + (" (channel)" if name in current else " (default)")
            for name in SAMPLER_RANGES
        ]
        title = "Updated settings" if given else "Settings for this channel"
        await interaction.response.send_message(f"{title}\n" + "\n".join(lines), ephemeral=True)

    @app_commands.command(name="greeting", description="Pick the greeting (no index: list them)")
    @app_commands.describe(index="1 = the main greeting, 2+ = alternate greetings; starts a new scene with it")
    async def greeting(
        self, interaction: discord.Interaction, index: app_commands.Range[int, 1, 100] | None = None
    ) -> None:
        settings, persona = await self._active(interaction)
        greetings = [g for g in (persona.greeting, *(persona.alternate_greetings or [])) if g.strip()]
        if not greetings:
            raise CommandError(f"{persona.name} has no greetings.")
        if index is None:
            lines = [
                f"**{i}.**{' (current)' if i - 1 == settings.greeting_index else ''} {_preview(g)}"
                for i, g in enumerate(greetings, start=1)
            ]
            await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)
            return
        await require_persona_manager(interaction)
        if index > len(greetings):
            raise CommandError(f"{persona.name} has {len(greetings)} greetings; pick 1 to {len(greetings)}.")
        async with self.bot.db.session() as session:
            row = await channel_repo.update_channel(
                session, settings.guild_id, settings.channel_id, greeting_index=index - 1
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.cog.new_scene(interaction, row, persona)
        await self._audit(interaction, "chat.greeting", index=index)
        await interaction.followup.send(f"A new scene begins with greeting {index}.", ephemeral=True)

    @app_commands.command(name="context", description="What the model is given for the next reply here")
    async def context(self, interaction: discord.Interaction) -> None:
        _settings, persona = await self._active(interaction)
        chat = self.cog.chat
        channel = interaction.channel
        if chat is None or not isinstance(channel, discord.TextChannel | discord.Thread):
            raise CommandError("The chat engine is not running.")
        active = await chat.active_channel(channel)
        if active is None:
            raise CommandError("No persona is active in this channel. Start one with /persona use.")
        history = await chat.history_for(channel.id, active)  # what the next reply reads, newest writes included
        _params, max_new = chat._sampler(active)
        # No conversation key: the inspector must not move the window the channel's real prompts reuse.
        built = chat.builder.build(
            PersonaSpec.from_row(persona),
            history,
            user_name=getattr(interaction.user, "display_name", "User"),
            persona_id=persona.id,
            mentions=chat._mentions(channel.guild, persona),
            max_new_tokens=max_new,
        )
        await interaction.response.send_message(
            embed=context_embed(persona.name, built, chat.builder.context_tokens, max_new), ephemeral=True
        )


def context_embed(name: str, built: BuiltPrompt, context_tokens: int, max_new: int) -> discord.Embed:
    """The /chat context inspector: where the token budget goes, what fits, which lore fired, how the prompt ends."""
    embed = discord.Embed(title=f"Context for {name}")
    embed.add_field(
        name="Token budget",
        value=f"{built.prompt_tokens} of {built.budget} prompt tokens used "
        f"({context_tokens} context − {max_new} for the reply)",
        inline=False,
    )
    parts = dataclasses.asdict(built.breakdown)
    embed.add_field(name="By part", value="\n".join(f"{part}: {tokens}" for part, tokens in parts.items()))
    messages = f"{built.messages_included} of {built.messages_available} in this scene fit"
    if built.newest_cut:
        messages += " (the newest was cut)"
    embed.add_field(name="Messages", value=messages)
    fired = [f"{e.name or e.uid} ({e.reason}; {e.placement}; {e.tokens} tokens)" for e in built.lore_fired]
    if built.lore_dropped:
        fired.append("over the lorebook budget: " + ", ".join(built.lore_dropped))
    embed.add_field(name="Lore entries fired", value=_clip("\n".join(fired) or "none", 1024), inline=False)
    # No two backticks may touch, or a fence in the prompt would close ours; the escape can double the length.
    tail = built.text[-PREVIEW_CHARS:].replace("`", "`\u200b")[-PREVIEW_CHARS:]
    embed.add_field(name="End of the prompt", value=f"```\n{tail}\n```", inline=False)
    return embed


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _preview(text: str, limit: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatSettingsCog(GroupCog):
    def __init__(self, bot: RPBot) -> None:
        super().__init__(bot)
        self.group = ChatGroup(self)

    def changed(self, channel_id: int) -> None:
        if self.chat is not None:
            self.chat.invalidate_channel(channel_id)

    async def new_scene(self, interaction: discord.Interaction, settings: ChannelSettings, persona: Persona) -> None:
        """Everything said before now leaves the prompt; the greeting is posted again."""
        channel = interaction.channel
        async with self.bot.db.session() as session:
            # The settings that apply here (a thread's parent's, when it has none of its own). The interaction's id
            # is a snowflake newer than every message before it, in the channel and its threads alike.
            row = await channel_repo.ensure_channel(session, settings.guild_id, settings.channel_id)
            channel_repo.start_scene(row, interaction.id)
            index = row.greeting_index
        self.changed(settings.channel_id)
        chat = self.chat
        if chat is not None and isinstance(channel, discord.TextChannel | discord.Thread):
            await chat.post_greeting(channel, persona, index, getattr(interaction.user, "display_name", "User"))


async def setup(bot: RPBot) -> None:
    await bot.add_cog(ChatSettingsCog(bot))
