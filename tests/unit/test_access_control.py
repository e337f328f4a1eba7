"""Access control (issue 7, part 6): bearer token and request limits of the worker's HTTP views, Kafka
TLS/SASL options mapped to kafka-python and Faust, and names/ids that can never become paths."""

from __future__ import annotations

import asyncio
import ssl

import certifi
import faust
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aggregations.definitions import check_name
from featurestream.cli import main
from featurestream.kafka_security import KafkaSecurity
from sinks.layout import dataset_dir
from stream import auth
from stream.reading import BadRequest, vector_entity_keys
from tests.integration.test_worker import TX

TOKEN = "s3cret-token"

# --- bearer token --------------------------------------------------------------------------------------


def test_token_from_file_or_env_and_one_line_errors(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert auth.resolve_token(path, environ={}) == TOKEN
    assert auth.resolve_token(path, environ={auth.TOKEN_ENV: "other"}) == TOKEN  # the file wins
    assert auth.resolve_token(None, environ={auth.TOKEN_ENV: f" {TOKEN} "}) == TOKEN
    assert auth.resolve_token(None, environ={}) is None
    with pytest.raises(ValueError, match="not found; hint"):
        auth.resolve_token(tmp_path / "missing", environ={})
    path.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        auth.resolve_token(path, environ={})
    with pytest.raises(ValueError, match="printable ASCII"):
        auth.resolve_token(None, environ={auth.TOKEN_ENV: "two words"})
    assert auth.client_headers(TOKEN) == {"Authorization": f"Bearer {TOKEN}"} and auth.client_headers(None) == {}


def test_authorized_compares_the_bearer_token():
    assert auth.authorized(f"Bearer {TOKEN}", TOKEN) and auth.authorized(f"bearer {TOKEN}", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", "Bearer \u00e9"):
        assert not auth.authorized(header, TOKEN), header


def _app(token: str | None) -> web.Application:
    """The middleware in front of routes shaped like the worker's."""

    async def entity(request):
        return web.json_response({"entity": request.match_info["entity"]})

    async def vectors(request):
        try:
            body = await auth.read_body(request)
        except auth.RequestTooLarge as exc:
            return web.json_response({"error": str(exc)}, status=413)
        return web.json_response({"bytes": len(body)})

    async def ok(request):
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[auth.middleware(token)])
    app.router.add_get("/features/transactions/{entity}", entity)
    app.router.add_post("/vectors/{vector}", vectors)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    app.router.add_get("/sample/{name}", ok)
    return app


def _serve(token, scenario):
    async def go():
        async with TestClient(TestServer(_app(token))) as client:
            await scenario(client)

    asyncio.run(go())


def test_every_route_but_health_and_metrics_needs_the_token():
    good = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario(client):
        for method, path in (("GET", "/features/transactions/u1"), ("POST", "/vectors/fraud"), ("GET", "/sample/fraud")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await client.request(method, path, headers=headers)
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "bearer token" in (await response.json())["error"]
            assert (await client.request(method, path, headers=good)).status == 200
        for path in ("/health", "/metrics"):  # probes and Prometheus scrapers carry no token
            assert (await client.get(path)).status == 200

    _serve(TOKEN, scenario)


def test_without_a_token_everything_is_open_but_limits_hold():
    async def scenario(client):
        assert (await client.get("/features/transactions/u1")).status == 200
        big = b"x" * (auth.MAX_BODY_BYTES + 1)
        response = await client.post("/vectors/fraud", data=big)  # with Content-Length: refused upfront
        assert response.status == 413 and "limit" in (await response.json())["error"]

        async def chunks():  # chunked: no Content-Length, refused while reading
            for _ in range(17):
                yield b"y" * 65536

        response = await client.post("/vectors/fraud", data=chunks())
        assert response.status == 413
        assert (await (await client.post("/vectors/fraud", data=b"{}")).json()) == {"bytes": 2}
        assert (await client.get("/features/transactions/" + "e" * 1025)).status == 400
        assert (await client.get("/features/transactions/" + "\u00e9" * 512)).status == 200  # 1024 bytes

    _serve(None, scenario)


def test_an_entity_id_that_looks_like_a_path_is_just_a_key():
    async def scenario(client):
        for raw, key in (("..%2F..%2Fetc", "../../etc"), ("%2Fetc%2Fpasswd", "/etc/passwd"), ("a%00b", "a\x00b")):
            response = await client.get(f"/features/transactions/{raw}")
            assert response.status == 200 and (await response.json())["entity"] == key

    _serve(None, scenario)


def test_vector_entity_keys_are_bounded():
    assert vector_entity_keys(TX, [{"user_id": "u" * 1024}]) == ["u" * 1024]
    with pytest.raises(BadRequest, match=r"entities\[1\]: entity key longer than 1024 bytes"):
        vector_entity_keys(TX, [{"user_id": "u"}, {"user_id": "u" * 1025}])


# --- names never become paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["..", ".", "../etc", "a/b", "a\\b", "a\x00b", "transactions\n", "", "/abs", "é", "a b", "x" * 129]
)
def test_malicious_feature_set_names_are_refused_before_any_path(name, tmp_path):
    with pytest.raises(ValueError, match="invalid feature set name"):
        check_name("feature set", name)
    with pytest.raises(ValueError, match="invalid feature set name"):
        dataset_dir(tmp_path, name)


def test_a_valid_name_stays_inside_the_data_dir(tmp_path):
    root = dataset_dir(tmp_path, "transactions")
    assert root.resolve().parent == tmp_path.resolve()


# --- Kafka TLS/SASL -----------------------------------------------------------------------------------


def test_plaintext_is_the_default_and_adds_nothing():
    security = KafkaSecurity().check()
    assert security.client_config() == {} and security.faust_credentials() is None


def test_sasl_ssl_maps_to_kafka_python_and_faust():
    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="pw",
        ssl_cafile=certifi.where(),
    ).check()  # fmt: skip
    assert security.client_config() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
        "ssl_check_hostname": True,
        "ssl_cafile": certifi.where(),
    }
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("svc", "pw")
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED and credentials.ssl_context.check_hostname
    assert "pw" not in repr(security)
    # What Faust hands to aiokafka:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = credentials_to_aiokafka_auth(credentials)
    assert settings["security_protocol"] == "SASL_SSL" and settings["sasl_plain_username"] == "svc"


def test_sasl_plaintext_and_ssl():
    plain = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p").check()
    assert plain.client_config() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u", "sasl_plain_password": "p",
    }  # fmt: skip
    credentials = plain.faust_credentials()
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.ssl_context is None
    tls = KafkaSecurity(protocol="SSL", ssl_cafile=certifi.where()).check()
    assert tls.client_config() == {"security_protocol": "SSL", "ssl_check_hostname": True, "ssl_cafile": certifi.where()}
    credentials = tls.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials) and credentials.protocol.value == "SSL"


def test_the_replicas_aiokafka_arguments_carry_the_same_protocol_sasl_and_verified_tls():
    assert KafkaSecurity().check().aiokafka_config() == {}
    plain = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p").check()
    assert plain.aiokafka_config() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u", "sasl_plain_password": "p",
    }  # fmt: skip
    config = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="svc", sasl_password="pw",
        ssl_cafile=certifi.where(),
    ).check().aiokafka_config()  # fmt: skip
    context = config.pop("ssl_context")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert config == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                      "sasl_plain_username": "svc", "sasl_plain_password": "pw"}  # fmt: skip
    from aiokafka import AIOKafkaConsumer

    async def make() -> None:  # arguments aiokafka takes (it refuses unknown ones)
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **config, ssl_context=context)

    asyncio.run(make())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"protocol": "TLS"}, "is not one of PLAINTEXT"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"}, "GSSAPI"),
        ({"protocol": "SASL_SSL", "sasl_username": "u"}, "hint: set FEATURESTREAM_KAFKA_SASL_USERNAME"),
        ({"ssl_cafile": "ca.pem"}, "needs --kafka-security-protocol SSL"),
        ({"protocol": "SSL", "ssl_certfile": "c.pem"}, "go together"),
        ({"protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "no such file"),
    ],
)
def test_security_mistakes_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        KafkaSecurity(**fields).check()


def test_cli_reads_options_and_env(monkeypatch, capsys):
    import argparse

    from featurestream import options

    monkeypatch.setenv("FEATURESTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("FEATURESTREAM_KAFKA_SASL_PASSWORD", "pw")
    parser = argparse.ArgumentParser()
    options.add(parser, "kafka")
    args = parser.parse_args(["--kafka-security-protocol", "sasl_plaintext", "--kafka-sasl-mechanism", "scram-sha-256"])
    security = KafkaSecurity.from_args(args)
    assert security.client_config()["sasl_mechanism"] == "SCRAM-SHA-256"
    monkeypatch.delenv("FEATURESTREAM_KAFKA_SASL_PASSWORD")
    assert main(["produce", "--kafka-security-protocol", "SASL_SSL", "--count", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurestream produce: error: --kafka-security-protocol SASL_SSL needs")
    assert "\n" not in err and "Traceback" not in err
    assert main(["get", "transactions", "u1", "--auth-token-file", "/no/such/token"]) == 2
    err = capsys.readouterr().err.strip()
    assert "auth token file" in err and "hint" in err and "\n" not in err
