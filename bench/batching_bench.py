"""What cutting batches by bytes as well as records costs the mirror per record.

Side by side in one run, medians of 7: the old cut (fixed count slices) and
``split_batches`` (count and byte budget from the server's limits), on records of the given
value size, with and without headers. Pure CPU: no servers.

    .venv/bin/python bench/batching_bench.py [--records N] [--value-bytes B]
"""

from __future__ import annotations

import argparse
import statistics
import time

from ferry.core.batching import DEFAULT_LIMITS, split_batches
from ferry.core.entries import KafkaRecord


def timed(fn, runs: int = 7) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=512)
    args = parser.parse_args()
    value = b"x" * args.value_bytes
    for label, headers in (("no headers", ()), ("2 headers", (("trace", b"t" * 16), ("v", b"1")))):
        recs = [
            KafkaRecord(0, i, 1_700_000_000_000 + i, b"key-%d" % i, value, headers)
            for i in range(args.records)
        ]
        count_only = timed(
            lambda recs=recs: [recs[i : i + 2000] for i in range(0, len(recs), 2000)]
        )
        by_bytes = timed(lambda recs=recs: list(split_batches(recs, 2000, DEFAULT_LIMITS, 4)))
        n = len(recs)
        print(
            f"{label:>10}: count-only {count_only / n * 1e6:.3f} us/rec, "
            f"count+bytes {by_bytes / n * 1e6:.3f} us/rec, "
            f"added {(by_bytes - count_only) / n * 1e6:.3f} us/rec "
            f"(ferry's own CPU per record in the backfill bench is ~7 us)"
        )


if __name__ == "__main__":
    main()
