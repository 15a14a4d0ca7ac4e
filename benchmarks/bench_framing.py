"""How long framing.read_frames takes to read one big frame that arrives in 1 MiB reads.

    .venv/bin/python benchmarks/bench_framing.py [MiB]

Linear reading takes about as long as copying the bytes; the earlier version rebuilt its buffer on
every read (quadratic: a 200 MiB frame took tens of seconds).
"""

from __future__ import annotations

import asyncio
import sys
import time

from starburst.framing import _LEN, read_frames


async def main(mib: int, read_frames=read_frames) -> float:
    reader = asyncio.StreamReader(limit=1 << 30)
    payload = b"x" * (mib << 20)
    data = memoryview(_LEN.pack(len(payload)) + payload)

    async def arrive() -> None:  # as from a socket: a piece at a time
        for i in range(0, len(data), 1 << 20):
            reader.feed_data(data[i:i + (1 << 20)])
            await asyncio.sleep(0)
        reader.feed_eof()

    t0 = time.perf_counter()
    feeder = asyncio.ensure_future(arrive())
    frames = [f async for f in read_frames(reader)]
    await feeder
    elapsed = time.perf_counter() - t0
    assert len(frames) == 1 and len(frames[0]) == len(payload)
    return elapsed


if __name__ == "__main__":
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(f"read one {mib} MiB frame in {asyncio.run(main(mib)):.3f} s")
