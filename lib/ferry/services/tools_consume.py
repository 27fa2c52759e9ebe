"""A consumer for soak tests and demos: reads a translated group with ``StreamConsumer`` and
records each entry it processes in an output stream in the same MULTI as its XACK, so a
kill -9 anywhere never processes an entry twice or skips one."""

from __future__ import annotations

import sys

from ferry.config import load_config
from ferry.live.consumer import StreamConsumer


def consume_forever(config_path: str, group: str, consumer: str, output: str) -> None:
    reader = StreamConsumer(
        load_config(config_path), group, consumer, batch=200, block_ms=200, claim_idle_ms=500
    )
    while True:
        batch = reader.poll()
        if not batch:
            continue
        by_stream: dict[str, list] = {}
        for d in batch:  # IDs are unique per stream only: each stream's XACK of its own
            by_stream.setdefault(d.stream, []).append(d)
        for stream, deliveries in by_stream.items():
            pipe = reader.client.pipeline(transaction=True)
            for d in deliveries:
                fields = {"p": d.record.partition, "o": d.record.offset, "id": d.entry_id}
                pipe.xadd(output, fields)
            pipe.xack(stream, reader.group, *[d.entry_id for d in deliveries])
            pipe.execute()


if __name__ == "__main__":
    consume_forever(*sys.argv[1:5])
