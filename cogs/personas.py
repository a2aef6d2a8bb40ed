"""/persona: create, import, edit, switch, list, show, delete and export personas."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.avatars import AvatarError, normalize_avatar
from bot.cards import CardError, card_to_persona_fields, export_json, export_png, parse_card, persona_to_card
from bot.cards.limits import MAX_CARD_FILE_BYTES, MiB
from bot.prompt import PersonaSpec, PromptError
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo
from bot.storage import moderation as mod_repo
from bot.storage import personas as persona_repo
from bot.storage.models import PERSONA_NAME_MAX, Persona
from cogs._group_cog import GroupCog
from cogs._permissions import require_persona_manager
from cogs.errors import CommandError, on_app_command_error

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
FIELD_MAX = 6000  # Discord's own limit for a string option
MODAL_FIELD_MAX = 4000  # Discord's limit for a text input
PAGE_SIZE = 10
CONFIRM_TIMEOUT = 120
EXPORTS_PER_MINUTE = 5


def _short(text: str, limit: int = 1000) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _View(discord.ui.View):
    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]) -> None:
        await on_app_command_error(interaction, error)


class Confirm(_View):
    """Yes/no buttons for the person who ran the command. The question must be the command's original response."""

    def __init__(self, interaction: discord.Interaction, yes_label: str, *, danger: bool = True) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT)
        self.asked = interaction
        self.value: bool | None = None
        self.yes.label = yes_label
        self.yes.style = discord.ButtonStyle.danger if danger else discord.ButtonStyle.primary

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.asked.user.id:
            await interaction.response.send_message("This question is for someone else.", ephemeral=True)
            return False
        return True

    async def on_timeout(self) -> None:
        # Buttons that no longer answer would only confuse: say plainly that nothing happened.
        try:
            await self.asked.edit_original_response(content="No answer in time; nothing was changed.", view=None)
        except discord.HTTPException as exc:
            log.info("could not close an unanswered question: %s", exc)

    @discord.ui.button(label="Yes")
    async def yes(self, interaction: discord.Interaction, _button: discord.ui.Button[Any]) -> None:
        self.value = True
        await interaction.response.edit_message(view=None)
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def no(self, interaction: discord.Interaction, _button: discord.ui.Button[Any]) -> None:
        self.value = False
        await interaction.response.edit_message(content="Cancelled.", view=None, embed=None)
        self.stop()


class PersonaEditModal(discord.ui.Modal, title="Edit persona"):
    def __init__(self, cog: PersonaCog, persona: Persona) -> None:
        super().__init__(title=f"Edit {persona.name}"[:45])
        self.cog = cog
        self.persona_id = persona.id
        self.fields: dict[str, discord.ui.TextInput[Any]] = {}
        # Imported cards may carry fields longer than a text input holds: the input shows their start, and an
        # unchanged start keeps the whole field (saving the cut text would silently lose the rest).
        self.long_fields: dict[str, str] = {}
        for key, label in (
            ("description", "Description"),
            ("personality", "Personality"),
            ("scenario", "Scenario"),
            ("greeting", "Greeting"),
            ("example_dialogue", "Example dialogue"),
        ):
            current = getattr(persona, key) or ""
            if len(current) > MODAL_FIELD_MAX:
                self.long_fields[key] = current
                label = f"{label} (first {MODAL_FIELD_MAX} of {len(current)} chars)"  # 45 at most
            field = discord.ui.TextInput(
                label=label[:45],
                style=discord.TextStyle.paragraph,
                default=current[:MODAL_FIELD_MAX] or None,
                required=key == "description",
                max_length=MODAL_FIELD_MAX,
            )
            self.fields[key] = field
            self.add_item(field)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await require_persona_manager(interaction)
        values = {key: field.value for key, field in self.fields.items()}
        for key, full in self.long_fields.items():
            if values[key] == full[:MODAL_FIELD_MAX]:
                values[key] = full
        async with self.cog.bot.db.session() as session:
            persona = await persona_repo.get_persona(session, self.persona_id)
            if persona is None or persona.guild_id != interaction.guild_id:
                raise CommandError("That persona was deleted meanwhile.")
            trial = PersonaSpec.from_row({**_columns(persona), **values})
            self.cog.check_fits(trial)
            await persona_repo.update_persona(session, persona, **values)
            await mod_repo.audit(
                session, interaction.guild_id, interaction.user.id, "persona.edit", persona.name, fields=list(values)
            )
            name = persona.name
        await self.cog.changed(self.persona_id)
        await interaction.response.send_message(f"Saved **{name}**.", ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await on_app_command_error(interaction, error)


class ListPages(_View):
    def __init__(self, cog: PersonaCog, guild_id: int, total: int, user_id: int) -> None:
        super().__init__(timeout=300)
        self.cog, self.guild_id, self.total, self.user_id = cog, guild_id, total, user_id
        self.page = 0
        self._sync()

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))

    def _sync(self) -> None:
        self.prev.disabled = self.page <= 0
        self.next.disabled = self.page >= self.pages - 1

    async def render(self) -> discord.Embed:
        async with self.cog.bot.db.session() as session:
            rows = await persona_repo.list_personas(
                session, self.guild_id, limit=PAGE_SIZE, offset=self.page * PAGE_SIZE
            )
        lines = [
            f"**{discord.utils.escape_markdown(p.name)}**"
            + (" (NSFW)" if p.nsfw else "")
            + (f" — {_short(p.description, 80)}" if p.description else "")
            for p in rows
        ]
        embed = discord.Embed(title="Personas", description="\n".join(lines) or "None yet.")
        embed.set_footer(text=f"Page {self.page + 1}/{self.pages} · {self.total} personas")
        return embed

    @discord.ui.button(label="◀", style=discord.ButtonStyle.secondary)
    async def prev(self, interaction: discord.Interaction, _button: discord.ui.Button[Any]) -> None:
        self.page = max(0, self.page - 1)
        self._sync()
        await interaction.response.edit_message(embed=await self.render(), view=self)

    @discord.ui.button(label="▶", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, _button: discord.ui.Button[Any]) -> None:
        self.page = min(self.pages - 1, self.page + 1)
        self._sync()
        await interaction.response.edit_message(embed=await self.render(), view=self)


def _columns(persona: Persona) -> dict[str, Any]:
    return {c.key: getattr(persona, c.key) for c in Persona.__table__.columns}


# No default_permissions: Discord applies them to a whole group, and /persona list and show are for everyone. Every
# command that changes something checks Manage Channels (or the persona manager role) when it runs.
@app_commands.guild_only()
class PersonaGroup(app_commands.Group, name="persona", description="Set up the server's personas"):
    def __init__(self, cog: PersonaCog) -> None:
        super().__init__()
        self.cog = cog

    @property
    def bot(self) -> RPBot:
        return self.cog.bot

    async def _audit(self, interaction: discord.Interaction, action: str, target: str, **details: Any) -> None:
        async with self.bot.db.session() as session:
            await mod_repo.audit(session, interaction.guild_id, interaction.user.id, action, target, **details)

    async def _get(self, guild_id: int, name: str) -> Persona:
        async with self.bot.db.session() as session:
            persona = await persona_repo.find_persona(session, guild_id, name)
        if persona is None:
            raise CommandError(f"There is no persona named {name!r} here. See /persona list.")
        return persona

    # -- creating --

    @app_commands.command(name="create", description="Create a persona")
    @app_commands.describe(
        name="Its display name",
        description="Who it is (appearance, background, manner)",
        personality="A short summary of its personality",
        scenario="The situation the roleplay starts in",
        greeting="Its first message when activated in a channel",
        example_dialogue="Example exchanges (<START> blocks)",
        avatar="An image for its avatar",
        nsfw="Marks it as adult content",
    )
    async def create(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, PERSONA_NAME_MAX],
        description: app_commands.Range[str, 1, FIELD_MAX],
        personality: app_commands.Range[str, 0, FIELD_MAX] = "",
        scenario: app_commands.Range[str, 0, FIELD_MAX] = "",
        greeting: app_commands.Range[str, 0, FIELD_MAX] = "",
        example_dialogue: app_commands.Range[str, 0, FIELD_MAX] = "",
        avatar: discord.Attachment | None = None,
        nsfw: bool = False,
    ) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        fields: dict[str, Any] = {
            "description": description,
            "personality": personality,
            "scenario": scenario,
            "greeting": greeting,
            "example_dialogue": example_dialogue,
            "nsfw": nsfw,
            "created_by": interaction.user.id,
        }
        if avatar is not None:
            fields["avatar"] = await self.cog.read_avatar(avatar)
            fields["avatar_mime"] = "image/png"
        self.cog.check_fits(PersonaSpec.from_row({"name": name, **fields}))
        async with self.bot.db.session() as session:
            persona = await persona_repo.create_persona(session, interaction.guild_id, name, **fields)
            await mod_repo.audit(session, interaction.guild_id, interaction.user.id, "persona.create", persona.name)
        await interaction.followup.send(
            f"Created **{discord.utils.escape_markdown(persona.name)}**. Activate it here with `/persona use`.",
            ephemeral=True,
        )

    @app_commands.command(name="import", description="Import a character card (PNG, JSON or CHARX)")
    @app_commands.describe(card="The card file", activate="Activate it in this channel right away")
    async def import_(self, interaction: discord.Interaction, card: discord.Attachment, activate: bool = False) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None
        if card.size > MAX_CARD_FILE_BYTES:  # refused before downloading it
            raise CommandError(
                f"That file is {card.size / MiB:.1f} MiB; cards are at most {MAX_CARD_FILE_BYTES // MiB} MiB."
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await card.read()
        imported = await asyncio.to_thread(parse_card, data, card.filename)
        fields = card_to_persona_fields(imported)
        notes = list(imported.warnings)  # what was read leniently or left out: the importer should know
        if fields.get("avatar"):
            try:
                fields["avatar"] = await asyncio.to_thread(normalize_avatar, fields["avatar"])
                fields["avatar_mime"] = "image/png"
            except AvatarError as exc:
                notes.append(f"the card image cannot be used as the avatar: {exc}")
                fields["avatar"], fields["avatar_mime"] = None, None
        name = str(fields.pop("name"))
        self.cog.check_fits(PersonaSpec.from_row({"name": name, **fields}))
        fields["created_by"] = interaction.user.id
        replace = False
        async with self.bot.db.session() as session:
            existing = await persona_repo.find_persona(session, interaction.guild_id, name)
        if existing is not None:
            view = Confirm(interaction, "Replace it")
            await interaction.followup.send(
                f"A persona named **{discord.utils.escape_markdown(existing.name)}** exists. Replace it with the card?",
                view=view,
                ephemeral=True,
            )
            await view.wait()
            if not view.value:
                return
            replace = True
        async with self.bot.db.session() as session:
            persona = await persona_repo.create_persona(session, interaction.guild_id, name, replace=replace, **fields)
            await mod_repo.audit(
                session,
                interaction.guild_id,
                interaction.user.id,
                "persona.import",
                persona.name,
                file=card.filename[:100],
                replaced=replace,
            )
        await self.cog.changed(persona.id, avatar=replace)
        lore = len((persona.lorebook or {}).get("entries", []) or [])
        summary = (
            f"Imported **{discord.utils.escape_markdown(persona.name)}**"
            f" ({len(persona.alternate_greetings or [])} alternate greetings, {lore} lorebook entries"
            f"{', avatar' if persona.avatar else ''})."
        )
        if notes:
            summary += "\nNotes: " + _short("; ".join(notes), 1000)
        if activate:
            try:
                summary += "\n" + await self.cog.activate(interaction, persona)
            except CommandError as exc:  # the import itself worked: say both
                summary += f"\nIt is not active here: {exc.message}"
        await interaction.followup.send(summary, ephemeral=True)

    @app_commands.command(name="edit", description="Edit a persona's long fields in a form")
    async def edit(self, interaction: discord.Interaction, name: str) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None
        persona = await self._get(interaction.guild_id, name)
        await interaction.response.send_modal(PersonaEditModal(self.cog, persona))

    # -- switching --

    @app_commands.command(name="use", description="Activate a persona in this channel")
    async def use(self, interaction: discord.Interaction, name: str) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None
        persona = await self._get(interaction.guild_id, name)
        await interaction.response.defer(ephemeral=True, thinking=True)
        message = await self.cog.activate(interaction, persona)
        await interaction.followup.send(message, ephemeral=True)

    @app_commands.command(name="off", description="Deactivate the persona in this channel")
    async def off(self, interaction: discord.Interaction) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None and interaction.channel_id is not None
        channel = interaction.channel
        thread = isinstance(channel, discord.Thread)
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        async with self.bot.db.session() as session:
            active = await channel_repo.effective_persona(session, interaction.channel_id, parent_id)
            if active is None:
                raise CommandError(f"No persona is active in this {'thread' if thread else 'channel'}.")
            # In a thread only the thread goes quiet: its parent channel (and other threads) keep the persona.
            await channel_repo.switch_off(session, interaction.guild_id, interaction.channel_id, thread=thread)
            await mod_repo.audit(
                session, interaction.guild_id, interaction.user.id, "persona.off", f"channel {interaction.channel_id}"
            )
        self.cog.channel_changed(interaction.channel_id)
        if thread and active[0].channel_id != interaction.channel_id:
            text = f"The persona is no longer active in this thread; <#{active[0].channel_id}> keeps it."
        else:
            text = f"The persona is no longer active in this {'thread' if thread else 'channel'}."
        await interaction.response.send_message(text, ephemeral=True)

    # -- looking --

    @app_commands.command(name="list", description="The personas of this server")
    async def list_(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            total = await persona_repo.count_personas(session, interaction.guild_id)
        view = ListPages(self.cog, interaction.guild_id, total, interaction.user.id)
        await interaction.response.send_message(
            embed=await view.render(), view=view if total > PAGE_SIZE else discord.utils.MISSING, ephemeral=True
        )

    @app_commands.command(name="show", description="A persona's fields and prompt size")
    @app_commands.describe(name="Which persona (default: the one active in this channel)")
    async def show(self, interaction: discord.Interaction, name: str | None = None) -> None:
        assert interaction.guild_id is not None
        if name:
            persona = await self._get(interaction.guild_id, name)
        else:
            channel = interaction.channel
            parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
            async with self.bot.db.session() as session:
                active = await channel_repo.effective_persona(session, interaction.channel_id or 0, parent_id)
            if active is None:
                raise CommandError("No persona is active here; name one: /persona show name:…")
            persona = active[1]
        # Discord refuses embeds over 6000 characters in all: the long fields share about 4500 of them.
        embed = discord.Embed(title=persona.name, description=_short(persona.description, 2000) or "—")
        for label, key in (("Personality", "personality"), ("Scenario", "scenario"), ("Greeting", "greeting")):
            if getattr(persona, key):
                embed.add_field(name=label, value=_short(getattr(persona, key), 800), inline=False)
        if persona.alternate_greetings:
            embed.add_field(name="Alternate greetings", value=str(len(persona.alternate_greetings)))
        lore = len((persona.lorebook or {}).get("entries", []) or [])
        if lore:
            embed.add_field(name="Lorebook entries", value=str(lore))
        if persona.tags:
            embed.add_field(name="Tags", value=_short(", ".join(persona.tags), 200))
        try:
            tokens = self.cog.persona_tokens(PersonaSpec.from_row(persona))
            embed.add_field(name="Persona block", value=f"{tokens} tokens")
        except PromptError as exc:
            embed.add_field(name="Persona block", value=f"too large: {exc}"[:1000])
        embed.set_footer(text="NSFW" if persona.nsfw else "SFW")
        kwargs: dict[str, Any] = {}
        if persona.avatar:
            kwargs["file"] = discord.File(io.BytesIO(persona.avatar), filename="avatar.png")
            embed.set_thumbnail(url="attachment://avatar.png")
        await interaction.response.send_message(embed=embed, ephemeral=True, **kwargs)

    # -- removing and exporting --

    @app_commands.command(name="delete", description="Delete a persona")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        await require_persona_manager(interaction)
        assert interaction.guild_id is not None
        persona = await self._get(interaction.guild_id, name)
        view = Confirm(interaction, "Delete")
        await interaction.response.send_message(
            f"Delete **{discord.utils.escape_markdown(persona.name)}**? Channels using it go quiet.",
            view=view,
            ephemeral=True,
        )
        await view.wait()
        if not view.value:
            return
        if self.cog.chat is not None:
            # Messages still on their way to the store name this persona: write them before it is gone.
            await self.cog.chat.writer.flush()
        async with self.bot.db.session() as session:
            row = await persona_repo.get_persona(session, persona.id)
            if row is not None:
                await persona_repo.delete_persona(session, row)
            await mod_repo.audit(session, interaction.guild_id, interaction.user.id, "persona.delete", persona.name)
        await self.cog.changed(persona.id, avatar=True)
        await interaction.followup.send(f"Deleted **{discord.utils.escape_markdown(persona.name)}**.", ephemeral=True)

    @app_commands.command(name="export", description="Export a persona as a character card")
    @app_commands.describe(format="PNG card (SillyTavern/Chub) or JSON")
    @app_commands.choices(
        format=[app_commands.Choice(name="PNG", value="png"), app_commands.Choice(name="JSON", value="json")]
    )
    # Anyone may export, and encoding a card with its image costs CPU: a few per minute each is plenty.
    @app_commands.checks.cooldown(EXPORTS_PER_MINUTE, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def export(self, interaction: discord.Interaction, name: str, format: str = "png") -> None:
        assert interaction.guild_id is not None
        persona = await self._get(interaction.guild_id, name)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            card = persona_to_card(persona)
            if format == "json":
                data = await asyncio.to_thread(export_json, card)
                filename = f"{_filename(persona.name)}.json"
            else:
                data = await asyncio.to_thread(export_png, card, persona.avatar)
                filename = f"{_filename(persona.name)}.png"
        except CardError as exc:
            raise CommandError(f"{persona.name} could not be exported: {exc}") from None
        await interaction.followup.send(
            f"**{discord.utils.escape_markdown(persona.name)}** as a character card:",
            file=discord.File(io.BytesIO(data), filename=filename),
            ephemeral=True,
        )

    @edit.autocomplete("name")
    @use.autocomplete("name")
    @show.autocomplete("name")
    @delete.autocomplete("name")
    @export.autocomplete("name")
    async def _names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        async with self.bot.db.session() as session:
            rows = await persona_repo.list_personas(session, interaction.guild_id, prefix=current.strip(), limit=25)
        return [app_commands.Choice(name=p.name[:100], value=p.name[:100]) for p in rows]


def _filename(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name).strip("_")
    return safe[:60] or "persona"


class PersonaCog(GroupCog):
    def __init__(self, bot: RPBot) -> None:
        super().__init__(bot)
        self.group = PersonaGroup(self)

    async def changed(self, persona_id: int, *, avatar: bool = False) -> None:
        """Tell the chat a persona changed; ``avatar``: its picture changed, or it is gone (ids can be reused)."""
        if self.chat is not None:
            self.chat.invalidate_persona(persona_id)
            if avatar:
                await self.chat.poster.forget_persona(persona_id)

    def channel_changed(self, channel_id: int) -> None:
        if self.chat is not None:
            self.chat.invalidate_channel(channel_id)

    def persona_tokens(self, spec: PersonaSpec) -> int:
        if self.chat is None:
            raise CommandError("The chat engine is not running.")
        return self.chat.builder.check_persona(spec)

    def check_fits(self, spec: PersonaSpec) -> None:
        """Refuse a persona whose definitions alone leave no room for the conversation (PersonaTooLarge says why)."""
        if self.chat is not None and self.bot.engine is not None:
            self.chat.builder.check_persona(spec)

    async def read_avatar(self, attachment: discord.Attachment) -> bytes:
        if attachment.size > 10 * 1024 * 1024:
            raise CommandError("Avatar images are at most 10 MiB.")
        data = await attachment.read()
        try:
            return await asyncio.to_thread(normalize_avatar, data)
        except AvatarError as exc:
            raise CommandError(str(exc)) from None

    async def activate(self, interaction: discord.Interaction, persona: Persona) -> str:
        """Make ``persona`` the channel's persona and post its greeting, which starts a new scene. Returns a summary."""
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            raise CommandError("Personas can speak in text channels and threads only.")
        if persona.nsfw and not channel.is_nsfw():
            raise CommandError(
                f"{persona.name} is marked NSFW, so it can only be used in age-restricted channels. "
                "Mark this channel age-restricted, or pick another persona."
            )
        async with self.bot.db.session() as session:
            guild = await guild_repo.get_guild(session, channel.guild.id)
            nsfw_only = guild.nsfw_only
        if nsfw_only and not channel.is_nsfw():
            raise CommandError(
                "This server only allows personas in age-restricted channels (the model is not safety-tuned). "
                "Mark this channel age-restricted, or an admin can run `/admin nsfw-only enabled:False`."
            )
        async with self.bot.db.session() as session:
            row = await channel_repo.set_active_persona(session, channel.guild.id, channel.id, persona.id)
            # The greeting begins a new scene, also when this persona was already active: what was said before
            # (to another persona, or before the persona arrived) stays out of the prompt. The interaction's id
            # is a snowflake newer than every message before it.
            channel_repo.start_scene(row, interaction.id)
            await mod_repo.audit(
                session, channel.guild.id, interaction.user.id, "persona.use", persona.name, channel=channel.id
            )
        self.channel_changed(channel.id)
        chat = self.chat
        if chat is None:
            return f"**{persona.name}** is active here, but the chat is not running (check the bot's log)."
        async with self.bot.db.session() as session:
            row = await channel_repo.get_channel(session, channel.id)
            index = row.greeting_index if row else 0
        await chat.post_greeting(channel, persona, index, getattr(interaction.user, "display_name", "User"))
        return f"**{discord.utils.escape_markdown(persona.name)}** is now active in {channel.mention}."


async def setup(bot: RPBot) -> None:
    await bot.add_cog(PersonaCog(bot))
