"""What a trim reports: removed, and which group held retention back (or was forced past)."""

from ferry.redis.retention import TrimResult


def result(**kw):
    base = dict(
        removed=250,
        calls=3,
        memory_before=2000,
        memory_after=1000,
        length_before=1000,
        length_after=750,
    )
    return TrimResult(**{**base, **kw})


def test_a_trim_no_group_held_back_says_only_what_it_removed():
    text = result().describe()
    assert text == "removed 250 entries in 3 steps; 1,000 -> 750 entries"
    assert "held" not in text and "forced" not in text


def test_a_held_trim_names_the_group_and_the_entries_it_kept():
    text = result(held_by="billing", held=1_750).describe()
    assert "1,750 entries" in text and "group billing" in text
    assert "not yet delivered and acknowledged" in text and "force" in text


def test_a_forced_trim_says_how_many_unacknowledged_entries_it_removed():
    text = result(held_by="billing", forced_past=600).describe()
    assert "forced" in text and "600" in text and "billing" in text
