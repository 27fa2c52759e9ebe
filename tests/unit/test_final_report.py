"""Step 06's final report: a row for every step that left evidence, nothing cut short."""

import json

from ferry.runbook.notebook import final_report


def write(folder, name, data):
    (folder / name).write_text(json.dumps(data))


def test_every_step_has_its_row_with_its_key_figures_in_full(tmp_path):
    write(tmp_path, "sizing.json", {"inputs": {"bytes_per_entry": 310.2}, "sizing": {"memory_gb": 1.5, "shards": 1, "nodes": 2, "monthly_cost": 90}})  # fmt: skip
    write(tmp_path, "preflight.json", {"checks": [{"name": "noeviction", "ok": True}]})
    write(tmp_path, "backfill.json", {"records": 200000, "msg_per_s": 51234.5, "complete": True})
    write(tmp_path, "dual-write.json", {"epoch": 1, "live_writers": ["w1", "w2"], "canaries": {"sent": 12, "in_redis": 12, "identical_in_kafka": 12}, "window": {"seconds": 10.3, "records": 10602, "divergence": 0}})  # fmt: skip
    write(tmp_path, "validation.json", {"kafka_count": 9, "redis_count": 9, "missing": 0, "duplicates": 0, "out_of_order": 0, "mismatched": 0})  # fmt: skip
    write(tmp_path, "row-sample.json", {"distinct": 200, "wanted": 200, "partitions": [0, 1, 2], "mismatched": 0, "not_in_stream": 0})  # fmt: skip
    write(tmp_path, "cutover.json", {"epoch": 3, "pause_ms": 257.5, "writer_pause_ms": {"w1": 202.1}, "lag_at_switch": {"0": 0}, "groups": [{"group": "billing", "start_id": "17-2"}]})  # fmt: skip
    write(tmp_path, "retention.json", {"removed": 10, "length_after": 5, "lag_threshold": 4000})
    report = final_report(tmp_path)
    steps = list(report["step"])
    assert [s.split()[0] for s in steps] == ["00", "01", "03", "02", "04", "05", "06"]
    text = report.to_string()
    assert "..." not in text
    for figure in (
        "pause 258 ms",
        "billing from 17-2",
        "divergence 0",
        "row sample 200 distinct",
        "4000",
    ):
        assert figure in text, figure
