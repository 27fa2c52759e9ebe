"""A writer process for the soak: a DualWriter sending tagged values (``ferry.live.ack_log.tag``)
at a steady rate, logging every attempt before ``send()`` and every fate as it is known
(``ferry.live.ack_log.AckLog``), until SIGTERM (then ``close()``) or SIGKILL.

    python tests/soak/ack_writer.py STREAM.yaml WRITER_ID LOG_FILE RATE
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from ferry.config import load_config
from ferry.live.ack_log import AckLog, tag
from ferry.live.delivery import WriterClosed, WriterFenced
from ferry.live.dualwriter import DualWriter, WriterHoldTimeout

KEYS = 24  # keys cycled over: every partition gets records of every writer


def main(config_file: str, writer_id: str, log_file: str, rate: float) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = AckLog(log_file)
    writer = DualWriter(
        load_config(config_file),
        writer_id=writer_id,
        poll_interval_s=0.1,
        producer_settings={"linger.ms": 50},  # like ferry traffic: Tansu reads big batches fast
    )
    began, seq = time.monotonic(), 0
    try:
        while not stop.is_set():
            seq += 1
            value = tag(writer_id, seq, b"soak")
            log.attempt(value)
            try:
                writer.send(
                    value,
                    key=b"acct-%d" % (seq % KEYS),
                    on_delivery=lambda err, d, v=value: log.fate(v, err, d),
                )
            except (WriterHoldTimeout, WriterFenced) as exc:
                log.refused(value, str(exc))
            ahead = seq / rate - (time.monotonic() - began)
            if ahead > 0:
                stop.wait(ahead)  # pacing to the rate
    finally:
        try:
            writer.close(30)
        except WriterClosed:
            pass  # each unsent record's future failed, and its fate is in the log
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
