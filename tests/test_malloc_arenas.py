"""The malloc arena cap that lowers a ptjf process's peak memory."""

import platform

import pytest

from ptjf.runtime import malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="only glibc has malloc arenas to cap")
def test_arenas_are_capped_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert malloc_arenas.limit_arenas() is True


def test_a_users_own_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert malloc_arenas.limit_arenas() is False
