"""Helper process: publish COUNT events from TASKS concurrent tasks (group commit).

usage: proc_writer.py BUS WRITER COUNT TASKS [PAUSE_S]
Each payload is {"w": WRITER, "t": TASK, "seq": N}; prints "ok" at the end.
"""

from __future__ import annotations

import asyncio
import sys

from loopbus.bus import Bus


async def main(path: str, writer: int, count: int, tasks: int, pause: float) -> None:
    async with Bus.connect(path) as bus:

        async def run(task: int) -> None:
            for seq in range(count // tasks):
                await bus.publish(
                    "test.write", {"w": writer, "t": task, "seq": seq}, agent=f"w{writer}"
                )
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(run(t) for t in range(tasks)))
    print("ok", flush=True)


if __name__ == "__main__":
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), pause))
