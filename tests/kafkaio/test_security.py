"""KafkaSecurity: from a properties file and/or FRAUDLITE_KAFKA_* variables, validated once; secrets never
shown (repr, describe, error messages)."""

from __future__ import annotations

import dataclasses

import pytest

from fraudlite.errors import ConfigError
from fraudlite.kafkaio.security import (
    ENV_PREFIX,
    KafkaSecurity,
    kafka_security,
    kafka_security_from_env,
    kafka_security_from_file,
)

SECRET = "hunter2-s3cret"
SSL_SECRET = "key-pass-0xBEEF"


@pytest.fixture
def props(tmp_path):
    """``props("line", ...)`` -> path of a properties file holding those lines."""

    def write(*lines: str):
        path = tmp_path / "client.properties"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write


def test_security_from_env_and_file_never_shows_secrets(props):
    path = props(
        "# kafka", "security.protocol=sasl_plaintext", "sasl.mechanism=SCRAM-SHA-512", "sasl.username=svc"
    )
    env = {"FRAUDLITE_KAFKA_SASL_PASSWORD": SECRET, "UNRELATED": "x"}
    sec = kafka_security(path, env)
    assert sec.security_protocol == "SASL_PLAINTEXT" and sec.sasl_mechanism == "SCRAM-SHA-512"
    kw = sec.client_kwargs()
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == SECRET
    assert "hunter2" not in repr(sec) and "hunter2" not in sec.describe() and "***" in sec.describe()
    path = props(f"sasl.password.typo={SECRET}")
    with pytest.raises(ConfigError) as e:
        kafka_security(path, {})
    assert "hunter2" not in str(e.value)


# -- the properties file ------------------------------------------------------------------------------


def test_file_comments_blanks_and_whitespace(props, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = props(
        "# a comment", "! also a comment", "", "   ", "  security.protocol = ssl  ", f"ssl.cafile={ca}",
        "ssl.password = a=b=c ",
    )  # fmt: skip
    sec = kafka_security(path, {})
    assert sec.security_protocol == "SSL" and sec.ssl_cafile == str(ca)
    assert sec.ssl_password == "a=b=c"  # only the first '=' separates; the value is stripped


def test_later_lines_win(props):
    sec = kafka_security(props("sasl.username=first", "sasl.username=second"), {})
    assert sec.sasl_username == "second"


def test_unknown_key_names_file_line_and_key_but_not_the_value(props):
    path = props("security.protocol=SASL_SSL", "# comment", f"sasl.pasword={SECRET}")
    with pytest.raises(ConfigError) as e:
        kafka_security(path, {})
    msg = str(e.value)
    assert f"{path}:3:" in msg and "'sasl.pasword'" in msg and "sasl.password" in msg  # the known keys
    assert SECRET not in msg


@pytest.mark.parametrize(
    "line",
    [
        f"sasl.password {SECRET}",  # Java properties allow ' ' and ':' as separators; we do not
        f"sasl.password: {SECRET}",
        f"sasl.password:{SECRET}=",  # base64 secrets end with '='
        f"sasl.password\t{SECRET}==",
        f": {SECRET}",
        f"={SECRET}",
    ],
)
def test_a_line_that_is_not_key_equals_value_is_named_without_its_content(props, line):
    path = props("security.protocol=SSL", line)
    with pytest.raises(ConfigError, match=rf"{path}:2: unknown key") as e:
        kafka_security(path, {})
    assert SECRET not in str(e.value)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.properties: cannot read \(FileNotFoundError\)"):
        kafka_security(tmp_path / "missing.properties", {})
    binary = tmp_path / "binary.properties"
    binary.write_bytes(b"sasl.password=\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError, match="UnicodeDecodeError") as e:
        kafka_security(binary, {})
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        kafka_security(tmp_path, {})  # a directory


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
    ],
)
def test_ssl_check_hostname_coercion(props, raw, expected):
    from_file = kafka_security(props("security.protocol=SSL", f"ssl.check.hostname={raw}"), {})
    from_env = kafka_security(
        None, {"FRAUDLITE_KAFKA_SECURITY_PROTOCOL": "SSL", "FRAUDLITE_KAFKA_SSL_CHECK_HOSTNAME": raw}
    )
    assert from_file.ssl_check_hostname is expected and from_env.ssl_check_hostname is expected
    assert from_file.client_kwargs()["ssl_check_hostname"] is expected


@pytest.mark.parametrize("raw", ["maybe", "", "on", "2"])
def test_ssl_check_hostname_rejects_anything_else(props, raw):
    with pytest.raises(ConfigError, match="ssl_check_hostname must be true or false"):
        kafka_security(props(f"ssl.check.hostname={raw}"), {})


def test_protocol_and_mechanism_are_case_insensitive(props):
    sec = kafka_security(props(" security.protocol=sasl_ssl", "sasl.mechanism= scram-sha-256 ", "sasl.username=u",
                               "sasl.password=p"), {})  # fmt: skip
    assert (sec.security_protocol, sec.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


# -- environment and precedence -------------------------------------------------------------------------


def test_environment_overrides_the_file_field_by_field(props):
    path = props("security.protocol=SASL_PLAINTEXT", "sasl.mechanism=PLAIN", "sasl.username=from-file",
                 "sasl.password=file-pass")  # fmt: skip
    env = {f"{ENV_PREFIX}SASL_USERNAME": "from-env", f"{ENV_PREFIX}SASL_PASSWORD": ""}  # empty: not set
    sec = kafka_security(path, env)
    assert (sec.sasl_username, sec.sasl_password, sec.sasl_mechanism) == ("from-env", "file-pass", "PLAIN")


def test_the_combination_is_validated_after_merging(props):
    # neither source alone is complete: the file has no password, the environment nothing else
    path = props("security.protocol=SASL_SSL", "sasl.mechanism=PLAIN", "sasl.username=svc")
    with pytest.raises(ConfigError, match="SASL_PASSWORD"):
        kafka_security(path, {})
    assert kafka_security(path, {f"{ENV_PREFIX}SASL_PASSWORD": SECRET}).sasl_password == SECRET


def test_environ_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv(f"{ENV_PREFIX}SECURITY_PROTOCOL", "ssl")
    monkeypatch.setenv(f"{ENV_PREFIX}SSL_CHECK_HOSTNAME", "false")
    sec = kafka_security()
    assert sec.security_protocol == "SSL" and sec.ssl_check_hostname is False
    assert kafka_security(None, {}) == KafkaSecurity()  # an explicit mapping replaces os.environ


def test_no_file_and_no_variables_give_plaintext_defaults():
    sec = kafka_security(None, {"FRAUDLITE_KAFKA_UNKNOWN_FIELD": "ignored"})
    assert sec == KafkaSecurity() and sec.client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_from_file_and_from_env_layer_over_a_base(props):
    base = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="a",
                         sasl_password="p")  # fmt: skip
    from_file = kafka_security_from_file(props("sasl.username=b"), base)
    assert (from_file.sasl_username, from_file.sasl_password, from_file.security_protocol) == (
        "b",
        "p",
        "SASL_PLAINTEXT",
    )
    from_env = kafka_security_from_env({f"{ENV_PREFIX}SASL_USERNAME": "c"}, from_file)
    assert (from_env.sasl_username, from_env.sasl_password) == ("c", "p")
    assert kafka_security_from_env({}) == KafkaSecurity()
    with pytest.raises(ConfigError, match="SECURITY_PROTOCOL"):
        kafka_security_from_file(props("security.protocol=TLS"))


# -- validation and client kwargs ------------------------------------------------------------------------


def test_invalid_combinations_name_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="SECURITY_PROTOCOL: must be one of"):
        KafkaSecurity(security_protocol="TLS")
    with pytest.raises(ConfigError, match="SASL_MECHANISM"):
        KafkaSecurity(security_protocol="SASL_SSL")
    with pytest.raises(ConfigError, match="SASL_USERNAME"):
        KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    with pytest.raises(ConfigError, match="SASL_USERNAME") as e:
        KafkaSecurity(
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_password=SECRET
        )
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match=r"SSL_KEYFILE: no such file: .*absent\.key"):
        KafkaSecurity(security_protocol="SSL", ssl_keyfile=str(tmp_path / "absent.key"))
    # mechanisms without a password, and an empty password, are accepted
    KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
    KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="")


def test_client_kwargs_per_protocol(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    sasl_ssl = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password=SECRET,
        ssl_certfile=str(cert), ssl_password=SSL_SECRET, ssl_check_hostname=False,
    )  # fmt: skip
    assert sasl_ssl.client_kwargs() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": SECRET, "ssl_check_hostname": False, "ssl_certfile": str(cert),
        "ssl_password": SSL_SECRET,
    }  # fmt: skip
    # SSL only: no SASL settings even if set; SASL over plaintext: no SSL settings
    ssl = KafkaSecurity(security_protocol="SSL", sasl_username="ignored", ssl_certfile=str(cert))
    assert ssl.client_kwargs() == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_certfile": str(cert),
    }
    oauth = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER", ssl_password="x")
    assert oauth.client_kwargs() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER"}


def test_secrets_never_in_repr_str_or_describe():
    sec = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="svc", sasl_password=SECRET,
        ssl_password=SSL_SECRET,
    )  # fmt: skip
    for text in (repr(sec), str(sec), sec.describe(), f"{sec!r}", repr([sec])):
        assert SECRET not in text and SSL_SECRET not in text
    assert sec.describe() == (
        "security_protocol=SASL_SSL sasl_mechanism=PLAIN sasl_username=svc sasl_password=*** ssl_password=***"
    )
    assert (
        "***" not in KafkaSecurity().describe()
        and KafkaSecurity().describe() == "security_protocol=PLAINTEXT"
    )
    # an empty password is still a password: shown as set, not as its (empty) value
    empty = dataclasses.replace(sec, sasl_password="", ssl_password=None)
    assert "sasl_password=***" in empty.describe() and "ssl_password" not in empty.describe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sec.sasl_password = "other"  # type: ignore[misc]
