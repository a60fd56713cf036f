"""Helper process: follow the bus and print "ID" per event as soon as it arrives.

usage: proc_follower.py BUS SAFETY_POLL_S COUNT
"""

from __future__ import annotations

import asyncio
import sys

from loopbus.bus import Bus


async def main(path: str, safety_poll_s: float, count: int) -> None:
    async with Bus.connect(path, safety_poll_s=safety_poll_s) as bus:
        seen = 0
        async for event in bus.subscribe("follower", ["wake.*"]):
            print(event.id, flush=True)
            seen += 1
            if seen >= count:
                break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
