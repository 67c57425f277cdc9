"""No password of any URL (broker, results, RedBeat; redis://, rediss://, several
Sentinel hosts, amqp://) in the Celery settings the workers show (``celery inspect conf``,
``report``), in ``mobyt config`` or in logs; the clients built from them still carry the
credentials, and a ``rediss://`` URL verifies the server's certificate."""

from __future__ import annotations

import json
import ssl

import pytest
from redbeat.schedulers import get_redis

from mobyt_worker import logs
from mobyt_worker.celeryapp import create_app
from mobyt_worker.cli.main import main
from mobyt_worker.config import Settings
from mobyt_worker.store.connection import connect, split_credentials
from mobyt_worker.errors import ConfigError
from mobyt_worker.producer import connect as producer
from mobyt_worker.runtime import Runtime

PW = "Pw-" + "q" * 12  # one password for every URL, so one grep finds any of them
ENVS = {
    "redis": {"REDIS_URL": f"redis://:{PW}@10.0.0.1:6379/0"},
    "redis-user": {"REDIS_URL": f"redis://ops:{PW}@10.0.0.1:6379/0"},
    "rediss": {"REDIS_URL": f"rediss://ops:{PW}@redis.internal:6380/0"},
    "sentinel": {"REDIS_URL": f"sentinel://:{PW}@h1:26379;sentinel://:{PW}@h2:26379/0"},
    "sentinel-user": {"REDIS_URL": f"sentinel://ops:{PW}@h1:26379;sentinel://ops:{PW}@h2:26379;"
                                   f"sentinel://ops:{PW}@h3:26379/0"},
    "amqp": {"REDIS_URL": f"redis://:{PW}@10.0.0.1:6379/0", "MOBYT_BROKER_URL": f"amqp://mq:{PW}@rabbit:5672/v"},
    "amqp-sentinel": {"REDIS_URL": f"sentinel://:{PW}@h1:26379;sentinel://:{PW}@h2:26379/0",
                      "MOBYT_BROKER_URL": f"amqps://mq:{PW}@rabbit1:5671/v;amqps://mq:{PW}@rabbit2:5671/v"},
}


@pytest.mark.parametrize("name", ENVS)
def test_the_settings_celery_shows_hold_no_password(name):
    app = create_app(Settings.from_env(ENVS[name]))
    for with_defaults in (False, True):
        shown = json.dumps(app.conf.table(with_defaults=with_defaults), default=repr)  # `celery inspect conf`
        assert PW not in shown
        assert PW not in app.conf.humanize(with_defaults=with_defaults)  # `celery inspect report`
    assert "redbeat_redis_url" in shown and "broker_url" in shown and "result_backend" in shown


@pytest.mark.parametrize("name", ["redis-user", "rediss"])
def test_redbeat_gets_the_credentials_its_url_no_longer_shows(name):
    app = create_app(Settings.from_env(ENVS[name]))
    assert "@" not in app.conf.redbeat_redis_url
    pool = get_redis(app).wrapped_connection.connection_pool
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == ("ops", PW)
    assert pool.connection_kwargs["host"] in ("10.0.0.1", "redis.internal")


def test_a_sentinel_username_reaches_the_broker_the_results_and_redbeat():
    app = create_app(Settings.from_env(ENVS["sentinel-user"]))
    broker = app.connection_for_write()
    assert (broker.userid, broker.password) == ("ops", PW)
    assert (app.backend.connparams["username"], app.backend.connparams["password"]) == ("ops", PW)
    get_redis(app)
    assert app.conf.redbeat_redis_options["sentinels"] == [("h1", 26379), ("h2", 26379), ("h3", 26379)]
    sentinel = app.redbeat_sentinel  # type: ignore[attr-defined]
    assert (sentinel.connection_kwargs["username"], sentinel.connection_kwargs["password"]) == ("ops", PW)
    ours = connect(ENVS["sentinel-user"]["REDIS_URL"]).connection_pool.connection_kwargs
    assert (ours["username"], ours["password"]) == ("ops", PW)


def test_a_plain_rediss_url_verifies_the_certificate_everywhere():
    url = "rediss://redis.internal:6380/0"
    app = create_app(Settings.from_env({"REDIS_URL": url}))
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}  # kombu's default: CERT_NONE
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED  # Celery's default: refuse the URL
    assert get_redis(app).wrapped_connection.connection_pool.make_connection().cert_reqs == ssl.CERT_REQUIRED
    assert connect(url).connection_pool.make_connection().cert_reqs == ssl.CERT_REQUIRED
    made = producer(url)
    assert made.app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert made.app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_a_rediss_url_s_own_ssl_parameters_win():
    url = "rediss://redis.internal:6380/0?ssl_cert_reqs=none"  # the operator's explicit choice
    app = create_app(Settings.from_env({"REDIS_URL": url}))
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_NONE
    assert get_redis(app).wrapped_connection.connection_pool.make_connection().cert_reqs == ssl.CERT_NONE


def test_a_plain_redis_url_asks_for_no_tls():
    app = create_app(Settings.from_env(ENVS["redis"]))
    assert not app.connection_for_write().ssl and "ssl_cert_reqs" not in app.backend.connparams
    assert app.conf.redbeat_redis_use_ssl is False


def test_split_credentials():
    assert split_credentials(f"rediss://ops:{PW}@h:6380/2?ssl_ca_certs=/ca.pem") == (
        "rediss://h:6380/2?ssl_ca_certs=/ca.pem", "ops", PW)
    assert split_credentials("redis://:p%40ss@h/0") == ("redis://h/0", None, "p@ss")
    assert split_credentials("redis://h/0") == ("redis://h/0", None, None)


@pytest.mark.parametrize("name", ENVS)
def test_mobyt_config_shows_every_setting_and_no_password(name, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for variable, value in {**ENVS[name], "MOBYT_PASSWORD": PW + "-mobyt", "MOBYT_API_TOKEN": PW * 2}.items():
        monkeypatch.setenv(variable, value)
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert PW not in text and PW not in json.dumps(shown)
    assert set(shown) >= {"redis_url", "broker_url", "password", "api_tokens"} and "redis_url" in text
    assert shown["redis_url"].count("***") == ENVS[name]["REDIS_URL"].count(PW)


def test_the_log_masks_cover_every_url_password_and_token():
    settings = Settings.from_env({**ENVS["amqp-sentinel"], "MOBYT_API_TOKEN": "t" * 24, "MOBYT_WEBHOOK_TOKEN": "w" * 24})
    line = f"lost {settings.redis_url} and {settings.broker_url} with {'t' * 24} {'w' * 24}"
    masked = logs.MaskFilter(settings.secrets()).mask(line)  # what worker.py and web/app.py install
    assert PW not in masked and "t" * 24 not in masked and "w" * 24 not in masked
    assert "sentinel://:***@h1:26379" in masked


@pytest.mark.parametrize("name", ["redis-user", "sentinel-user", "amqp"])
def test_reprs_show_no_password(name):
    settings = Settings.from_env({**ENVS[name], "MOBYT_LOGIN": "acme", "MOBYT_PASSWORD": PW + "-mobyt"})
    app = create_app(settings)
    rt = Runtime(settings)
    try:
        objects = [settings, app, app.connection_for_write(), app.backend, rt.client, rt.redis, rt.store, rt.intents]
        assert [repr(o) for o in objects if PW in repr(o) or PW in str(o)] == []
    finally:
        rt.close()


def test_a_malformed_sentinel_url_is_refused_naming_the_variable_not_showing_it():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": f"sentinel://:{PW}@h1:26379;sentinel://:{PW}@/0"})
    assert info.value.variable == "REDIS_URL" and "part 2 of 2" in str(info.value) and PW not in str(info.value)
