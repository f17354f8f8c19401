"""Settings: environment parsing with the MASENET_ prefix, defaults, derived names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.settings import Settings, get_settings, mask_url_password


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "API_KEYS", "MAX_BATCH", "QUEUE_PREFIX", "IMGSZ", "TTA"):
        monkeypatch.delenv(f"MASENET_{name}", raising=False)
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.imgsz is None  # the checkpoint's own inference size
    assert settings.tta is None  # the checkpoint's: off for the shipped weights
    assert settings.max_delay_ms == 5.0
    assert settings.worker_metrics_port == 9101
    assert settings.api_keys == ()
    assert not settings.auth_enabled
    assert settings.image_queue == "masenet:images"
    assert settings.video_queue == "masenet:video"
    assert settings.effective_max_batch(on_gpu=True) == 32
    assert settings.effective_max_batch(on_gpu=False) == 8


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASENET_REDIS_URL", "redis://:secret@redis:6380/2")
    monkeypatch.setenv("MASENET_API_KEYS", " key-one, key-two ,,")
    monkeypatch.setenv("MASENET_MAX_BATCH", "16")
    monkeypatch.setenv("MASENET_HALF", "true")
    monkeypatch.setenv("MASENET_TTA", "true")
    monkeypatch.setenv("MASENET_QUEUE_PREFIX", "edge")
    monkeypatch.setenv("MASENET_TIMEOUT_S", "2.5")
    settings = Settings()
    assert settings.api_keys == ("key-one", "key-two")
    assert settings.auth_enabled
    assert settings.effective_max_batch(on_gpu=False) == 16
    assert settings.half is True and settings.tta == "mirror"  # the earlier on/off form: true means mirror
    assert settings.timeout_s == 2.5
    assert settings.image_queue == "edge:images"
    assert settings.worker_key("w1") == "edge:workers:w1"
    assert "secret" not in settings.redis_display_url
    assert settings.redis_display_url == "redis://:***@redis:6380/2"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASENET_IMGSZ", "100")  # not a multiple of 32
    with pytest.raises(ValidationError, match="multiple of 32"):
        Settings()
    monkeypatch.setenv("MASENET_IMGSZ", "320")
    monkeypatch.setenv("MASENET_QUEUE_PREFIX", "has space")
    with pytest.raises(ValidationError, match="prefix"):
        Settings()
    monkeypatch.setenv("MASENET_QUEUE_PREFIX", "edge")
    monkeypatch.setenv("MASENET_TTA", "rotate")
    with pytest.raises(ValidationError, match="'off', 'mirror' or 'flips'"):
        Settings()
    monkeypatch.setenv("MASENET_TTA", "Flips")
    assert Settings().tta == "flips"
    monkeypatch.setenv("MASENET_TTA", "off")
    assert Settings().tta == "off"
    monkeypatch.setenv("MASENET_TTA", "")
    assert Settings().tta is None


def test_get_settings_is_cached_and_read_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("MASENET_MAX_QUEUE", "77")
    try:
        assert get_settings().max_queue == 77
        monkeypatch.setenv("MASENET_MAX_QUEUE", "78")
        assert get_settings() is get_settings()
        assert get_settings().max_queue == 77
    finally:
        get_settings.cache_clear()


def test_mask_url_password_leaves_plain_urls() -> None:
    assert mask_url_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url_password("redis://user:pw@host/1") == "redis://user:***@host/1"
