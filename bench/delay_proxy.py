"""A TCP relay that adds a fixed one-way delay in each direction: a stand-in for
`tc qdisc ... netem delay` on kernels built without sch_netem.

Every byte received on one side is sent on the other `--delay-ms` later (in order, per
connection), so a request/response costs at least 2 x delay more, as over a link with
that RTT. The first client bytes of a connection are held one extra round trip after the
accept, standing in for the TCP handshake the relay answers at once. At most
`--buffer-bytes` are held per direction (reads pause beyond that), like a TCP window.
Bandwidth is left to the kernel (`tc ... tbf` on the interfaces); TCP slow start over
the emulated RTT is not reproduced.

    python3 bench/delay_proxy.py --listen 10.231.0.2:5000 --upstream 127.0.0.1:5001 --delay-ms 10

Runs until SIGTERM/SIGINT. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

READ_BYTES = 64 * 1024


def _split_addr(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay_s: float,
    not_before: float,
    buffer_bytes: int,
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    room = asyncio.Semaphore(max(1, buffer_bytes // READ_BYTES))

    async def receive() -> None:
        try:
            while True:
                await room.acquire()
                data = await reader.read(READ_BYTES)
                queue.put_nowait((loop.time() + delay_s, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), b""))

    async def send() -> None:
        while True:
            due, data = await queue.get()
            room.release()
            wait = max(due, not_before) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    receiver = asyncio.create_task(receive())
    try:
        await send()
    except (ConnectionError, OSError):
        pass
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiver


async def _serve(
    listen: tuple[str, int], upstream: tuple[str, int], delay_s: float, buffer_bytes: int
) -> None:
    loop = asyncio.get_running_loop()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        accepted = loop.time()
        try:
            u_reader, u_writer = await asyncio.open_connection(*upstream)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(
                _pump(c_reader, u_writer, delay_s, accepted + 2 * delay_s, buffer_bytes),
                _pump(u_reader, c_writer, delay_s, 0.0, buffer_bytes),
            )
        finally:
            for w in (u_writer, c_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"delay_proxy: {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_split_addr, required=True, help="HOST:PORT")
    parser.add_argument("--upstream", type=_split_addr, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    parser.add_argument("--buffer-bytes", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.listen, args.upstream, args.delay_ms / 1000, args.buffer_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
