from ferry.redis.target import ServerInfo, supports_stream_ids


def test_stream_id_support_by_server_version():
    assert supports_stream_ids(ServerInfo("redis", "7.0.15", "noeviction", False))
    assert not supports_stream_ids(ServerInfo("redis", "6.2.14", "noeviction", False))
    assert supports_stream_ids(ServerInfo("valkey", "9.1.2", "noeviction", False))
