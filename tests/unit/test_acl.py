"""The ACL lines are made from one list per role."""

import pytest

from ferry.errors import ConfigError
from ferry.redis.acl import ROLES, setuser_line


def test_a_line_grants_only_the_roles_commands_on_the_migrations_keys():
    line = setuser_line("validator", "v1", "payments")
    assert line.startswith(
        "ACL SETUSER v1 on >PASSWORD resetkeys ~*{payments}* ~*{payments:*}* resetchannels -@all"
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


def test_the_key_patterns_cover_every_layout_and_no_other_migration():
    from fnmatch import fnmatchcase

    from ferry.core.ingest import MigrationKeys

    line = setuser_line("mirror", "m", "payments")
    patterns = [w[1:] for w in line.split() if w.startswith("~")]
    mine = []
    for layout in ("merged", "per-partition", "spread"):
        keys = MigrationKeys("{payments}", "{payments}:stream", layout)
        mine += [keys.state, *keys.streams([0, 7]), keys.partition_state(7)]
    theirs = ["{payments-eu}:stream", "{payments.v2:3}:ferry:state", "{pay}:stream"]
    assert all(any(fnmatchcase(k, p) for p in patterns) for k in mine)
    assert not any(fnmatchcase(k, p) for k in theirs for p in patterns)
