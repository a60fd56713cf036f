"""Helper process: an at-least-once consumer that records every event it handles.

usage: proc_consumer.py BUS OUT_FILE BATCH IDLE_TIMEOUT
Appends "id\n" to OUT_FILE per handled event, acks after every BATCH events. IDLE_TIMEOUT
<= 0 means run until killed; otherwise stop (after a final ack) when idle that long.
"""

from __future__ import annotations

import os
import sys
import time

from loopbus.bus import SyncBus


def main(path: str, out: str, batch: int, idle: float) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending = 0
    last = None
    with SyncBus(path) as bus:
        for event in bus.subscribe(
            "crashy", ["*"], timeout=idle if idle > 0 else None, batch_size=batch
        ):
            os.write(fd, f"{event.id}\n".encode())  # the "effect" of handling the event
            time.sleep(0.001)  # some work, so the consumer has a backlog to be killed in
            pending += 1
            last = event.id
            if pending >= batch:
                bus.ack("crashy", last)
                pending = 0
        if last is not None and pending:
            bus.ack("crashy", last)
    os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
