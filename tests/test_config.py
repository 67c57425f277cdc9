"""Settings: every bad variable is named at start-up; secrets never print."""

from __future__ import annotations

import json
import logging

import pytest

from mobyt_worker.config import DEFAULT_PATHS, Secret, Settings
from mobyt_worker.errors import ConfigError

HOOK, API, API2 = "hook-" + "h" * 19, "api-" + "a" * 20, "api2-" + "b" * 19  # 24 characters each
SENTINEL = "sentinel://ops:s-pw-1@h1:26379;sentinel://ops:s-pw-2@h2:26379/0"


def test_defaults_follow_the_spec():
    s = Settings.from_env({})
    assert s.base_url == "https://api.moby.fr" and s.redis_url == "redis://localhost:6379/0"
    assert s.timezone.key == "Europe/Paris" and s.country == "FR"
    assert s.url_for("SENDSMS") == "https://api.moby.fr/Moby/SENDSMS"
    assert s.url_for("REMOVE_DELAYED") == "https://api.moby.fr/Mobyt/REMOVE_DELAYED"
    assert set(s.paths) == set(DEFAULT_PATHS)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MOBYT_BASE_URL", "ftp://api.moby.fr"),
        ("MOBYT_BASE_URL", "https://user:pw@api.moby.fr"),
        ("MOBYT_PATH_SENDSMS", "Moby/SENDSMS"),
        ("MOBYT_TIMEZONE", "Mars/Olympus"),
        ("MOBYT_COUNTRY", "France"),
        ("MOBYT_CONNECT_TIMEOUT", "0"),
        ("MOBYT_READ_TIMEOUT", "soon"),
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "sentinel://:pw@h1:26379;redis://:pw@h2:6379/0"),
        ("MOBYT_KEY_PREFIX", "a b"),
        ("MOBYT_DEFAULT_MESSAGE_TYPE", "X"),
        ("MOBYT_NON_GSM", "ucs2"),
        ("MOBYT_WORKER_CONCURRENCY", "-4"),
        ("MOBYT_POLL_INTERVALS", "15,0,30"),
        ("MOBYT_SEND_RATE_LIMIT", "-1"),
        ("MOBYT_CREDIT_THRESHOLD", "1.5"),
        ("MOBYT_SEND_RETRY_FOR", "0"),
        ("MOBYT_CALL_DEADLINE", "0"),
        ("MOBYT_MAX_ANSWER_BYTES", "1MB"),
        ("MOBYT_MAX_ANSWER_BYTES", "4096"),  # not one chunk's SMSSTATUS (500 rows)
        ("MOBYT_MAX_PAGE_BYTES", "-1"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}:")
    assert ":pw@" not in str(info.value)


def test_values_are_parsed():
    s = Settings.from_env({"MOBYT_POLL_INTERVALS": "1,2.5", "MOBYT_DEFAULT_MESSAGE_TYPE": "l",
                           "MOBYT_COUNTRY": "be", "MOBYT_PATH_SMSSTATUS": "/Mobyt/SMSSTATUS"})
    assert s.poll_intervals == (1.0, 2.5) and s.default_message_type == "L" and s.country == "BE"
    assert s.url_for("SMSSTATUS").endswith("/Mobyt/SMSSTATUS")


def test_provider_answers_are_bounded_in_time_and_size_the_pages_more_than_the_rest():
    s = Settings.from_env({})
    assert (s.call_deadline, s.max_answer_bytes, s.max_page_bytes) == (30.0, 1 << 20, 32 << 20)
    s = Settings.from_env({"MOBYT_CALL_DEADLINE": "2.5", "MOBYT_MAX_ANSWER_BYTES": "6400",
                           "MOBYT_BULK_CHUNK_SIZE": "100", "MOBYT_MAX_PAGE_BYTES": "1000000"})
    assert (s.call_deadline, s.max_answer_bytes, s.max_page_bytes) == (2.5, 6400, 1_000_000)
    with pytest.raises(ConfigError) as info:  # 64 bytes a status row, one row a recipient
        Settings.from_env({"MOBYT_MAX_ANSWER_BYTES": "6400", "MOBYT_BULK_CHUNK_SIZE": "101"})
    assert info.value.variable == "MOBYT_MAX_ANSWER_BYTES" and "MOBYT_BULK_CHUNK_SIZE" in str(info.value)


def test_the_http_pool_fits_the_worker_concurrency_unless_set():
    assert Settings.from_env({"MOBYT_WORKER_CONCURRENCY": "16"}).pool_size == 16
    assert Settings.from_env({"MOBYT_WORKER_CONCURRENCY": "16", "MOBYT_HTTP_POOL_SIZE": "4"}).pool_size == 4


def test_credentials_are_required_only_to_call_the_provider():
    s = Settings.from_env({})
    with pytest.raises(ConfigError) as info:
        s.require_credentials()
    assert info.value.variable == "MOBYT_LOGIN"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MOBYT_LOGIN": "acme"}).require_credentials()
    assert info.value.variable == "MOBYT_PASSWORD"


def test_secrets_never_print(caplog):
    s = Settings.from_env({"MOBYT_LOGIN": "acme", "MOBYT_PASSWORD": "hunter2-pw", "MOBYT_WEBHOOK_TOKEN": HOOK,
                           "MOBYT_API_TOKEN": f"{API},{API2}", "REDIS_URL": SENTINEL,
                           "MOBYT_BROKER_URL": "amqps://mq:mq-pw-3@rabbit:5671/v"})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", s, s)
    for text in (repr(s), str(s), caplog.text, repr(s.password), f"{s.webhook_token}", json.dumps(s.shown())):
        assert [x for x in ("hunter2-pw", HOOK, API, API2, "s-pw-1", "s-pw-2", "mq-pw-3") if x in text] == []
    assert s.shown()["redis_url"] == "sentinel://ops:***@h1:26379;sentinel://ops:***@h2:26379/0"
    assert s.shown()["broker_url"] == "amqps://mq:***@rabbit:5671/v"
    assert s.shown()["api_tokens"] == ["***", "***"] and s.shown()["password"] == "***"
    assert s.password.reveal() == "hunter2-pw"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("x"))


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MOBYT_LOGIN=from-file\nMOBYT_COUNTRY=IT\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOBYT_COUNTRY", "ES")
    monkeypatch.delenv("MOBYT_LOGIN", raising=False)
    s = Settings.from_env()
    assert s.login == "from-file" and s.country == "ES"


def test_a_parent_directory_s_dotenv_is_never_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MOBYT_LOGIN=from-parent\nMOBYT_COUNTRY=IT\n")
    here = tmp_path / "app"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("MOBYT_LOGIN", raising=False)
    monkeypatch.delenv("MOBYT_COUNTRY", raising=False)
    monkeypatch.delenv("MOBYT_ENV_FILE", raising=False)
    assert Settings.from_env().login == ""
    (here / ".env").write_text("MOBYT_LOGIN=from-cwd\n")
    s = Settings.from_env()
    assert s.login == "from-cwd" and s.country == "FR"  # the parent's MOBYT_COUNTRY was not read either


def test_mobyt_env_file_names_the_file_to_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MOBYT_LOGIN=from-cwd\n")
    (tmp_path / "prod.env").write_text("MOBYT_LOGIN=from-named\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOBYT_LOGIN", raising=False)
    monkeypatch.setenv("MOBYT_ENV_FILE", str(tmp_path / "prod.env"))
    assert Settings.from_env().login == "from-named"
    monkeypatch.setenv("MOBYT_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert info.value.variable == "MOBYT_ENV_FILE"


@pytest.mark.parametrize("variable, value, message", [
    ("MOBYT_API_TOKEN", "short-token-9", "the token is shorter than 24 characters"),
    ("MOBYT_API_TOKEN", f"{API}, short-token-9", "token 2 of 2 is shorter than 24 characters"),
    ("MOBYT_WEBHOOK_TOKEN", "short-token-9", "the token is shorter than 24 characters"),
    ("MOBYT_WEBHOOK_TOKEN", "x" * 23, "the token is shorter than 24 characters"),
])
def test_a_token_shorter_than_24_characters_is_refused_without_showing_it(variable, value, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable and info.value.message == message
    assert "short-token-9" not in str(info.value) and "x" * 23 not in str(info.value)


def test_tokens_of_24_characters_are_accepted():
    s = Settings.from_env({"MOBYT_API_TOKEN": f" {API} ,{API2}", "MOBYT_WEBHOOK_TOKEN": HOOK})
    assert [t.reveal() for t in s.api_tokens] == [API, API2] and s.webhook_token.reveal() == HOOK
    assert Settings.from_env({"MOBYT_API_TOKEN": "", "MOBYT_WEBHOOK_TOKEN": " "}).api_tokens == ()
