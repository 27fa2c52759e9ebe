"""The ACL lines are made from one list per role."""

import pytest

from ferry.errors import ConfigError
from ferry.redis.acl import ROLES, setuser_line


def test_a_line_grants_only_the_roles_commands_on_the_migrations_keys():
    line = setuser_line("validator", "v1", "payments")
    assert line.startswith(
        "ACL SETUSER v1 on >PASSWORD resetkeys ~*{payments}* resetchannels -@all"
    )
    granted = {word[1:] for word in line.split() if word.startswith("+")}
    assert granted == {"ping", "hello", "multi", "discard", *ROLES["validator"].commands}
    assert not {"evalsha", "xadd", "hset", "del"} & granted  # read-only


def test_an_unknown_role_is_named():
    with pytest.raises(
        ConfigError,
        match="unknown role .admin.; roles: mirror, validator, writer, consumer, operator",
    ):
        setuser_line("admin", "u", "payments")
