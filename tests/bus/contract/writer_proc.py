"""Contract-suite helper process: publish COUNT events as agent NAME, one commit each.

usage: writer_proc.py TARGET NAME COUNT  -- payloads are {"w": NAME, "seq": N}; prints "ok".
"""

from __future__ import annotations

import sys


def main(target: str, name: str, count: int) -> None:
    import loopbus.bus as loopbus

    with loopbus.open(target) as bus:
        for seq in range(count):
            bus.publish("contract.write", {"w": name, "seq": seq}, agent=name)
    print("ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
