"""The KEDA objects step 06 renders: what a pod needs to reach Redis (address, database, TLS,
ACL user), one lag trigger per handed-over group, and the real CRD schema accepting them."""

import pytest
import yaml

from ferry.config import parse_config
from ferry.errors import ConfigError, FerryError
from ferry.runbook.keda import (
    KedaError,
    render_scaled_object,
    triggered_groups,
    validate_keda_objects,
)


def doc(**redis):
    return {
        "name": "payments",
        "kafka": {"bootstrap_servers": "k1:9092", "topic": "payments"},
        "redis": redis
        if "url" in redis or "sentinel" in redis
        else {"url": "redis://r1/0", **redis},
    }


def render(config, groups=("billing",), **kwargs):
    options = dict(deployment="payments-consumer", namespace="pay", lag_count=500)
    options.update(kwargs)
    return render_scaled_object(config, groups=list(groups), **options)


def objects(text):
    scaled, *rest = list(yaml.safe_load_all(text))
    return scaled, (rest[0] if rest else None)


def env(name):
    return {"env": name}


def test_address_and_database_come_from_the_url():
    config = parse_config(doc(url="redis://redis.pay.svc:6390/3"), "p.yaml")
    scaled, _ = objects(render(config))
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["address"] == "redis.pay.svc:6390"
    assert trigger["metadata"]["databaseIndex"] == "3"
    assert trigger["metadata"]["stream"] == "{payments}:stream"
    assert trigger["metadata"]["enableTLS"] == "false"


def test_default_port_and_database():
    config = parse_config(doc(url="redis://redis.pay.svc"), "p.yaml")
    metadata = objects(render(config))[0]["spec"]["triggers"][0]["metadata"]
    assert (metadata["address"], metadata["databaseIndex"]) == ("redis.pay.svc:6379", "0")


def test_database_from_the_query_and_ipv6_host_bracketed():
    config = parse_config(doc(url="redis://[fd00::5]:6379?db=2"), "p.yaml")
    metadata = objects(render(config))[0]["spec"]["triggers"][0]["metadata"]
    assert (metadata["address"], metadata["databaseIndex"]) == ("[fd00::5]:6379", "2")


def test_unix_socket_url_is_refused_naming_the_field():
    config = parse_config(doc(url="unix:///var/run/redis.sock"), "p.yaml")
    with pytest.raises(ConfigError, match=r"p\.yaml: redis\.url: .*unix.*pod"):
        render(config)


def test_an_address_given_for_pods_overrides_the_url():
    config = parse_config(doc(url="unix:///var/run/redis.sock?db=4"), "p.yaml")
    metadata = objects(render(config, address="redis.pay.svc:6379"))[0]["spec"]["triggers"][0][
        "metadata"
    ]
    assert (metadata["address"], metadata["databaseIndex"]) == ("redis.pay.svc:6379", "4")
    with pytest.raises(KedaError, match="address"):
        render(config, address="redis.pay.svc")  # no port


def test_one_lag_trigger_per_handed_over_group():
    config = parse_config(doc(), "p.yaml")
    text = render(config, groups=["billing", "fraud", "ledger"])
    scaled, _ = objects(text)
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["consumerGroup"] for t in triggers] == ["billing", "fraud", "ledger"]
    assert {t["metadata"]["lagCount"] for t in triggers} == {"500"}
    assert triggered_groups(text) == {"billing", "fraud", "ledger"}
    assert scaled["spec"]["scaleTargetRef"] == {"name": "payments-consumer"}
    assert scaled["metadata"]["namespace"] == "pay"


def test_a_spread_group_has_a_trigger_per_partition_stream():
    """Spread and per-partition: a handed-over group is a Redis group on each partition's
    stream, so KEDA needs each one's lag: a trigger per stream, all with the group's name."""
    config = parse_config({**doc(), "redis": {"url": "redis://r1/0", "layout": "spread"}}, "p")
    text = render(config, groups=["billing", "fraud"], partitions=[2, 0, 1])
    triggers = objects(text)[0]["spec"]["triggers"]
    streams = ["{payments:0}:stream", "{payments:1}:stream", "{payments:2}:stream"]
    assert [(t["metadata"]["consumerGroup"], t["metadata"]["stream"]) for t in triggers] == [
        (group, stream) for group in ("billing", "fraud") for stream in streams
    ]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    # KEDA follows the largest trigger: the group's 500 shared out over its 3 streams
    assert {t["metadata"]["lagCount"] for t in triggers} == {"166"}
    assert triggered_groups(text) == {"billing", "fraud"}

    per_partition = parse_config(
        {**doc(), "redis": {"url": "redis://r1/0", "layout": "per-partition"}}, "p"
    )
    triggers = objects(render(per_partition, partitions=[0, 1]))[0]["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        "{payments}:stream:0",
        "{payments}:stream:1",
    ]
    # the merged layout reads one stream whatever partitions say
    merged = objects(render(parse_config(doc(), "p"), partitions=[0, 1, 2]))[0]
    assert [t["metadata"]["stream"] for t in merged["spec"]["triggers"]] == ["{payments}:stream"]


def test_a_spread_group_without_its_partitions_is_refused():
    config = parse_config({**doc(), "redis": {"url": "redis://r1/0", "layout": "spread"}}, "p")
    for partitions in (None, []):
        with pytest.raises(KedaError, match="redis.layout 'spread'.*partition"):
            render(config, partitions=partitions)


def test_no_group_no_scaled_object():
    with pytest.raises(KedaError, match="no consumer group"):
        render(parse_config(doc(), "p.yaml"), groups=[])


def test_acl_username_and_password_through_trigger_authentication():
    config = parse_config(
        doc(url="redis://r1:6379", username=env("SECRET_USER"), password=env("SECRET_PW")),
        "p.yaml",
    )
    text = render(config, auth_secret="payments-redis")
    scaled, auth = objects(text)
    assert auth["kind"] == "TriggerAuthentication"
    assert auth["metadata"]["namespace"] == "pay"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("payments-redis", "username"),
        "password": ("payments-redis", "password"),
    }
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert not {"username", "password", "usernameFromEnv", "passwordFromEnv"} & set(
            trigger["metadata"]
        )
    assert "SECRET_USER" not in text and "SECRET_PW" not in text  # references, never values


def test_no_credentials_no_trigger_authentication():
    scaled, auth = objects(render(parse_config(doc(), "p.yaml")))
    assert auth is None
    assert "authenticationRef" not in scaled["spec"]["triggers"][0]


def test_tls_files_become_secret_refs(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    config = parse_config(
        doc(
            url="rediss://redis.pay.svc:6380",
            password=env("PW"),
            tls={
                "ca_file": str(tmp_path / "ca.pem"),
                "cert_file": str(tmp_path / "client.pem"),
                "key_file": str(tmp_path / "client.key"),
            },
        ),
        "p.yaml",
    )
    scaled, auth = objects(render(config, tls_secret="redis-tls"))
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["enableTLS"] == "true"
    assert "unsafeSsl" not in metadata
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs["ca"] == ("redis-tls", "ca.crt")
    assert refs["cert"] == ("redis-tls", "tls.crt")
    assert refs["key"] == ("redis-tls", "tls.key")
    # KEDA refuses TLS switched on both in the trigger (enableTLS) and the auth (tls)
    assert "tls" not in refs


def test_rediss_without_tls_block_and_insecure_skip_verify(tmp_path):
    plain = parse_config(doc(url="rediss://r1:6380"), "p.yaml")
    scaled, auth = objects(render(plain))
    assert scaled["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"
    assert auth is None
    insecure = parse_config(
        doc(url="rediss://r1:6380", tls={"insecure_skip_verify": True}), "p.yaml"
    )
    metadata = objects(render(insecure))[0]["spec"]["triggers"][0]["metadata"]
    assert metadata["unsafeSsl"] == "true"


def test_sentinel_variant():
    config = parse_config(
        doc(
            sentinel={
                "addresses": ["s1:26379", "s2:26379"],
                "service": "pay",
                "db": 2,
                "password": env("SENTINEL_PW"),
            },
            username=env("U"),
            password=env("P"),
        ),
        "p.yaml",
    )
    scaled, auth = objects(render(config, groups=["billing", "fraud"]))
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-sentinel-streams"
        metadata = trigger["metadata"]
        assert metadata["addresses"] == "s1:26379,s2:26379"
        assert metadata["sentinelMaster"] == "pay"
        assert metadata["databaseIndex"] == "2"
        assert "address" not in metadata
    params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert params == {"username", "password", "sentinelPassword"}


def test_cluster_variant():
    config = parse_config(
        doc(
            url="redis://node-0.redis.pay.svc:6379",
            cluster={"addresses": ["node-0.redis.pay.svc:6379", "node-1.redis.pay.svc:6379"]},
            password=env("P"),
        ),
        "p.yaml",
    )
    scaled, auth = objects(render(config))
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-cluster-streams"
    assert trigger["metadata"]["addresses"] == "node-0.redis.pay.svc:6379,node-1.redis.pay.svc:6379"
    assert "address" not in trigger["metadata"]
    assert "databaseIndex" not in trigger["metadata"]  # a cluster has database 0 only
    assert auth is not None


def test_kubernetes_names_are_checked_and_made_valid():
    config = parse_config({**doc(), "name": "Pay_Ments"}, "p.yaml")
    scaled, _ = objects(render(config))
    assert scaled["metadata"]["name"] == "pay-ments-consumer"
    with pytest.raises(KedaError, match="keda_namespace"):
        render(config, namespace="Not_A_Namespace")
    with pytest.raises(KedaError, match="keda_deployment"):
        render(config, deployment="")


def test_keda_error_is_a_ferry_error():
    assert issubclass(KedaError, FerryError)


# ---- the real CRD schema (fetched once from the Go module proxy, then cached)


@pytest.fixture(scope="module")
def crds():
    from ferry.runbook.keda import fetch_keda_crds

    try:
        return fetch_keda_crds()
    except KedaError as exc:  # no network and no cache: say so rather than pass
        pytest.skip(f"KEDA CRDs unavailable: {exc}")


def test_rendered_objects_validate_against_the_crd_schema(crds, tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    configs = [
        parse_config(doc(url="redis://r1:6379/1", username=env("U"), password=env("P")), "p"),
        parse_config(doc(url="rediss://r1:6380", tls={"ca_file": str(tmp_path / "ca.pem")}), "p"),
        parse_config(doc(sentinel={"addresses": ["s1:26379"], "service": "m"}), "p"),
        parse_config(doc(url="redis://n0:6379", cluster={"addresses": ["n0:6379"]}), "p"),
    ]
    for config in configs:
        text = render(config, groups=["billing", "fraud"])
        assert validate_keda_objects(text, crds) == [], text
    spread = parse_config(
        doc(url="redis://n0:6379", cluster={"addresses": ["n0:6379"]}, layout="spread"), "p"
    )
    text = render(spread, groups=["billing", "fraud"], partitions=[0, 1, 2])
    assert len(objects(text)[0]["spec"]["triggers"]) == 6
    assert validate_keda_objects(text, crds) == [], text


def test_the_validator_fails_a_wrong_type(crds):
    text = render(parse_config(doc(password=env("P")), "p"))
    scaled, auth = objects(text)
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 500  # KEDA metadata are strings
    scaled["spec"]["minReplicaCount"] = "one"
    del auth["spec"]["secretTargetRef"][0]["key"]
    problems = validate_keda_objects(yaml.safe_dump_all([scaled, auth]), crds)
    assert any("triggers.0.metadata.lagCount" in p and "string" in p for p in problems), problems
    assert any("minReplicaCount" in p for p in problems), problems
    assert any("TriggerAuthentication" in p and "'key' is a required" in p for p in problems)


def test_the_validator_refuses_unknown_kinds_and_dangling_auth_refs(crds):
    text = render(parse_config(doc(password=env("P")), "p"))
    scaled, _ = objects(text)
    problems = validate_keda_objects(yaml.safe_dump(scaled), crds)  # auth left out
    assert any("authenticationRef" in p for p in problems), problems
    problems = validate_keda_objects("apiVersion: keda.sh/v1alpha1\nkind: ScaledJobb\n", crds)
    assert any("ScaledJobb" in p for p in problems), problems
    assert validate_keda_objects("", crds) == ["no object to validate"]
