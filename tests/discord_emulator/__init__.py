"""An in-process Discord API emulator for end-to-end tests of the real discord.py client. See README.md."""

from tests.discord_emulator.emulator import DiscordEmulator, Upload
from tests.discord_emulator.interactions import InteractionHandle
from tests.discord_emulator.models import AppCommand, Attachment, Channel, Guild, Member, Message, Role, User, Webhook
from tests.discord_emulator.recording import RecordedRequest

__all__ = [
    "AppCommand",
    "Attachment",
    "Channel",
    "DiscordEmulator",
    "Guild",
    "InteractionHandle",
    "Member",
    "Message",
    "RecordedRequest",
    "Role",
    "Upload",
    "User",
    "Webhook",
]
