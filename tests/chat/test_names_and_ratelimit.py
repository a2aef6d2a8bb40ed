from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.chat.names import mentions_name, webhook_username
from bot.chat.ratelimit import SlidingWindowLimiter


@given(st.text(max_size=300))
def test_webhook_username_always_valid(name: str) -> None:
    out = webhook_username(name)
    assert 1 <= len(out) <= 80
    assert "clyde" not in out.lower() and "discord" not in out.lower()


def test_webhook_username_keeps_normal_names() -> None:
    assert webhook_username("Seraphina") == "Seraphina"
    assert webhook_username("  ") == "Persona"
    assert webhook_username("Discord Kitty").replace("\u2060", "") == "Discord Kitty"


def test_mentions_name_word_boundary_case_insensitive() -> None:
    assert mentions_name("hey seraphina, look", "Seraphina")
    assert mentions_name("SERAPHINA!", "Seraphina")
    assert not mentions_name("seraphinas", "Seraphina")
    assert mentions_name("ask Dr. Who?", "Dr. Who")
    assert not mentions_name("anything", "")


def test_sliding_window() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(clock=lambda: now[0])
    assert all(limiter.hit(1, 7, 3, 10) for _ in range(3))
    assert not limiter.hit(1, 7, 3, 10)
    assert limiter.hit(1, 8, 3, 10) and limiter.hit(2, 7, 3, 10)  # other users and guilds are separate
    assert limiter.retry_after(1, 7, 10) == 10
    now[0] = 10.0
    assert limiter.hit(1, 7, 3, 10)
    assert limiter.hit(1, 7, 0, 10)  # 0 disables


def test_limiter_memory_is_bounded() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(clock=lambda: now[0], max_keys=100)
    for user in range(1000):
        now[0] += 1
        limiter.hit(1, user, 5, 60)
    assert len(limiter._hits) <= 100
