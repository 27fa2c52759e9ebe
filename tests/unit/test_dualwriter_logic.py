from ferry.core.entries import KafkaRecord
from ferry.live.dualwriter import consecutive_runs


def item(p, o):
    return (KafkaRecord(p, o, 0, None, b""), 0.0)


def test_runs_split_at_gaps_and_partitions_and_keep_order():
    delivered = [item(0, 5), item(1, 3), item(0, 6), item(0, 8), item(1, 4), item(0, 7)]
    runs = [[(r.partition, r.offset) for r, _ in run] for run in consecutive_runs(delivered)]
    assert runs == [[(0, 5), (0, 6), (0, 7), (0, 8)], [(1, 3), (1, 4)]]


def test_a_gap_another_producer_will_fill_starts_a_new_run():
    runs = consecutive_runs([item(0, 1), item(0, 2), item(0, 4)])
    assert [[r.offset for r, _ in run] for run in runs] == [[1, 2], [4]]
