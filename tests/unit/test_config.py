import textwrap

import pytest

from ferry.config import SecretRef, load_config, parse_config, parse_start
from ferry.errors import ConfigError


def doc(**overrides):
    base = {
        "name": "payments",
        "kafka": {"bootstrap_servers": "k1:9092", "topic": "payments"},
        "redis": {"url": "redis://r1:6379/0"},
    }
    base.update(overrides)
    return base


def test_minimal_config_has_safe_defaults():
    config = parse_config(doc(), "p.yaml")
    assert config.kafka.client == "confluent"
    assert config.redis.stream == "{payments}:stream"
    assert config.redis.layout == "merged"
    assert config.start.kind == "earliest"
    assert config.hash_tag == "{payments}"


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"name": "bad name!"}, "name", "letters"),
        ({"kafka": {"topic": "x"}}, "kafka.bootstrap_servers", "required"),
        (
            {"kafka": {"bootstrap_servers": "k", "topic": "x", "client": "java"}},
            "kafka.client",
            "not one of",
        ),
        ({"kafka": {"bootstrap_servers": "k", "topic": 5}}, "kafka.topic", "expected str"),
        (
            {"kafka": {"bootstrap_servers": "k", "topic": "x", "tpoic": "y"}},
            "kafka",
            "unknown field(s): tpoic",
        ),
        ({"redis": {"url": "http://r"}}, "redis.url", "redis://"),
        ({"redis": {"url": "redis://:hunter2@r:6379"}}, "redis.url", "carries a password"),
        (
            {"redis": {"url": "redis://r", "stream": "payments"}},
            "redis.stream",
            "hash tag {payments}",
        ),
        (
            {"redis": {"url": "redis://r", "stream": "x{other}:{payments}"}},
            "redis.stream",
            "its first {...} is {other}",
        ),
        (
            {"redis": {"url": "redis://r", "stream": "{}{payments}"}},
            "redis.stream",
            "it has no {...}",
        ),
        ({"redis": {"url": "redis://r", "layout": "sharded"}}, "redis.layout", "not one of"),
        ({"redis": {"url": "redis://r", "password": "hunter2"}}, "redis.password", "inline"),
        (
            {"redis": {"url": "redis://r", "password": {"env": "A", "file": "/b"}}},
            "redis.password",
            "exactly one",
        ),
        (
            {"redis": {"url": "redis://r", "password": {"vault": "x"}}},
            "redis.password",
            "unknown field(s): vault",
        ),
        ({"start": "yesterday"}, "start", "not 'earliest'"),
        ({"start": "0d"}, "start", "positive"),
        ({"start": "2026-11-01T00:00:00"}, "start", "time zone"),
        ({"batch_size": 0}, "batch_size", "outside"),
        ({"batch_size": True}, "batch_size", "expected int"),
        ({"colour": "blue"}, "(top level)", "unknown field(s): colour"),
    ],
)
def test_errors_name_file_field_and_problem(overrides, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(doc(**overrides), "streams/p.yaml")
    message = str(info.value)
    assert message.startswith("streams/p.yaml: ")
    assert field in message
    assert words in message


def test_sasl_needs_credentials():
    kafka = {"bootstrap_servers": "k", "topic": "x", "security": {"protocol": "SASL_SSL"}}
    with pytest.raises(ConfigError, match="kafka.security: protocol SASL_SSL needs"):
        parse_config(doc(kafka=kafka), "f.yaml")


def test_secret_refs_resolve_from_env_and_file(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("FERRY_TEST_PW", "from-env")
    assert SecretRef(env="FERRY_TEST_PW").resolve() == "from-env"
    assert SecretRef(file=str(secret)).resolve() == "from-file"
    assert str(SecretRef(env="FERRY_TEST_PW")) == "env:FERRY_TEST_PW"  # never the value
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        SecretRef(env="NOPE_NOT_SET").resolve()
    with pytest.raises(ConfigError, match="cannot be read"):
        SecretRef(file=str(tmp_path / "missing")).resolve()


@pytest.mark.parametrize(
    "text, kind, millis",
    [
        ("earliest", "earliest", 0),
        ("7d", "age", 7 * 86_400_000),
        ("36h", "age", 36 * 3_600_000),
        ("90s", "age", 90_000),
        ("2026-11-01T00:00:00Z", "timestamp", 1_793_491_200_000),
        ("2026-11-01T01:00:00+01:00", "timestamp", 1_793_491_200_000),
    ],
)
def test_start_positions(text, kind, millis):
    start = parse_start(text)
    assert (start.kind, start.millis) == (kind, millis)


def test_start_timestamp_lookup():
    assert parse_start("earliest").timestamp_ms(1000) is None
    assert parse_start("1s").timestamp_ms(5000) == 4000
    assert parse_start("1970-01-01T00:00:02Z").timestamp_ms(99) == 2000


def test_load_by_name_and_path(tmp_path, monkeypatch):
    streams = tmp_path / "runbook" / "streams"
    streams.mkdir(parents=True)
    (streams / "orders.yaml").write_text(
        textwrap.dedent("""
        name: orders
        kafka: {bootstrap_servers: embedded, topic: orders}
        redis: {url: embedded}
        start: 7d
    """)
    )
    monkeypatch.chdir(tmp_path)
    assert load_config("orders").name == "orders"
    assert load_config(streams / "orders.yaml").start.kind == "age"
    with pytest.raises(ConfigError, match="known streams: orders"):
        load_config("nope")
    (streams / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config("broken")


def test_trim_policy_and_persistence():
    config = parse_config(
        doc(trim={"max_age": "7d"}, redis={"url": "redis://r", "persistence": "aof"}), "f"
    )
    assert config.trim.max_age_ms == 7 * 86_400_000 and config.trim.max_len is None
    assert config.redis.persistence == "aof"
    assert parse_config(doc(trim={"max_len": 1000}), "f").trim.max_len == 1000
    assert parse_config(doc(), "f").trim is None
    with pytest.raises(ConfigError, match="f: trim: give exactly one of max_age"):
        parse_config(doc(trim={"max_age": "7d", "max_len": 5}), "f")
    with pytest.raises(ConfigError, match="trim.max_age: 'soon' is not a positive duration"):
        parse_config(doc(trim={"max_age": "soon"}), "f")
    with pytest.raises(ConfigError, match="redis.persistence: 'disk' is not one of"):
        parse_config(doc(redis={"url": "redis://r", "persistence": "disk"}), "f")


@pytest.mark.parametrize(
    "url, param",
    [
        ("redis://r1:6379/0?password=hunter2", "password"),
        ("rediss://r1:6380/0?ssl_cert_reqs=none", "ssl_cert_reqs"),
        ("rediss://r1:6380/0?ssl_ca_certs=/etc/ca.pem", "ssl_ca_certs"),
        ("redis://r1:6379/0?username=app", "username"),
    ],
)
def test_url_query_parameters_with_credentials_or_tls_settings_are_refused(url, param):
    with pytest.raises(ConfigError, match=rf"redis\.url.*'{param}' is refused") as info:
        parse_config(doc(redis={"url": url}), "p.yaml")
    assert "hunter2" not in str(info.value)  # the message never echoes the URL's secrets


def test_tls_settings_are_configuration(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    config = parse_config(
        doc(redis={"url": "rediss://r1:6380/0", "tls": {"ca_file": str(ca)}}), "p.yaml"
    )
    assert config.redis.tls.ca_file == str(ca)
    assert config.redis.tls.insecure_skip_verify is False  # verification is on by default


@pytest.mark.parametrize(
    "url, tls, words",
    [
        ("redis://r1:6379/0", {}, "needs a rediss:// URL"),
        ("rediss://r1:6380/0", {"ca_file": "/nonexistent/ca.pem"}, "not a readable file"),
        ("rediss://r1:6380/0", {"cert_file": "CA"}, "both cert_file and key_file"),
        ("rediss://r1:6380/0", {"verify": False}, "unknown field"),
    ],
)
def test_bad_tls_settings_name_the_field(tmp_path, url, tls, words):
    (tmp_path / "CA").write_text("-")
    tls = {k: (str(tmp_path / v) if v == "CA" else v) for k, v in tls.items()}
    with pytest.raises(ConfigError, match=words):
        parse_config(doc(redis={"url": url, "tls": tls}), "p.yaml")


def test_sentinel_names_the_primary_instead_of_a_url():
    config = parse_config(
        doc(redis={"sentinel": {"addresses": ["s1:26379", "s2:26379"], "service": "pay"}}),
        "p.yaml",
    )
    assert config.redis.sentinel.addresses == (("s1", 26379), ("s2", 26379))
    assert config.redis.sentinel.service == "pay" and config.redis.url == "sentinel"


@pytest.mark.parametrize(
    "redis_doc, words",
    [
        ({"url": "redis://r1", "sentinel": {"addresses": ["s:1"], "service": "x"}}, "not both"),
        ({"sentinel": {"addresses": ["s1"], "service": "x"}}, "'s1' is not host:port"),
        ({"sentinel": {"addresses": [], "service": "x"}}, "at least one"),
        ({"sentinel": {"addresses": ["s:1"]}}, r"redis\.sentinel\.service: is required"),
    ],
)
def test_bad_sentinel_settings_name_the_field(redis_doc, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(doc(redis=redis_doc), "p.yaml")


def test_keda_follows_sentinel_too():
    import yaml

    from ferry.runbook.keda import render_scaled_object

    config = parse_config(
        doc(redis={"sentinel": {"addresses": ["s1:26379", "s2:26379"], "service": "pay"}}),
        "p.yaml",
    )
    rendered = render_scaled_object(
        config, deployment="d", groups=["g"], namespace="n", lag_count=10
    )
    trigger = next(yaml.safe_load_all(rendered))["spec"]["triggers"][0]
    assert trigger["type"] == "redis-sentinel-streams"
    assert trigger["metadata"]["addresses"] == "s1:26379,s2:26379"
    assert trigger["metadata"]["sentinelMaster"] == "pay"


def test_cluster_nodes_for_consumers():
    config = parse_config(
        doc(redis={"url": "redis://n0:6379", "cluster": {"addresses": ["n0:6379", "n1:6380"]}}),
        "p.yaml",
    )
    assert config.redis.cluster.addresses == (("n0", 6379), ("n1", 6380))
    assert parse_config(doc(), "p.yaml").redis.cluster is None


@pytest.mark.parametrize(
    "redis_doc, words",
    [
        (
            {"url": "redis://n0", "cluster": {"addresses": ["n0"]}},
            r"redis\.cluster\.addresses: 'n0' is not host:port",
        ),
        (
            {"url": "redis://n0", "cluster": {"addresses": []}},
            r"redis\.cluster\.addresses: needs at least one",
        ),
        ({"url": "redis://n0", "cluster": {}}, r"redis\.cluster\.addresses: is required"),
        (
            {"url": "redis://n0", "cluster": {"addresses": ["n0:1"], "nodes": 3}},
            r"redis\.cluster: unknown field\(s\): nodes",
        ),
        (
            {"url": "redis://n0/2", "cluster": {"addresses": ["n0:1"]}},
            r"redis\.cluster: .*database 0",
        ),
        (
            {
                "sentinel": {"addresses": ["s:1"], "service": "x"},
                "cluster": {"addresses": ["n0:1"]},
            },
            r"redis\.cluster: give either sentinel or cluster",
        ),
    ],
)
def test_bad_cluster_settings_name_the_field(redis_doc, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(doc(redis=redis_doc), "p.yaml")


def test_max_future_skew_bounds_entry_ids_and_is_a_duration():
    assert parse_config(doc()).redis.max_future_skew_ms == 300_000  # default: 5 minutes
    redis_doc = {"url": "redis://r1:6379/0", "max_future_skew": "1h"}
    assert parse_config(doc(redis=redis_doc)).redis.max_future_skew_ms == 3_600_000
    for bad in ("0s", "soon", "-5m", 300):
        with pytest.raises(ConfigError, match=r"p\.yaml: redis\.max_future_skew"):
            parse_config(doc(redis={**redis_doc, "max_future_skew": bad}), "p.yaml")
