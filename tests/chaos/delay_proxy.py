#!/usr/bin/env python3
"""A TCP proxy that delays every chunk by a fixed time in each direction, keeping
order: a host "further away" from a server, for tests (the kernel here has no
netem). Prints "listening PORT" on stdout once it accepts connections; runs
until SIGTERM/SIGINT.

    delay_proxy.py --target 127.0.0.1:6379 --delay-ms 20 [--port 0]
"""
import argparse
import asyncio
import signal
import sys


async def pump(reader, writer, delay):
    # One queue per direction: chunks leave in order, each `delay` after it came.
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.put_nowait((loop.time() + delay, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((loop.time() + delay, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    delay = a.delay_ms / 1000.0

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, uw, delay), pump(ur, cw, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", a.port)
    print("listening %d" % server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
