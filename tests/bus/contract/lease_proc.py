"""Contract-suite helper process: take lease NAME on TARGET, print "held", sleep until killed.

usage: lease_proc.py TARGET NAME
"""

from __future__ import annotations

import sys
import time


def main(target: str, name: str) -> None:
    import loopbus.bus as loopbus

    store = loopbus.open(target)
    lease = store.lease(name)
    print("held", flush=True)
    try:
        time.sleep(120)
    finally:
        lease.release()
        store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
