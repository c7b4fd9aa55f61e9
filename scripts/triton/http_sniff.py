#!/usr/bin/env python3
"""A loopback TCP proxy that records how a client's HTTP requests look on the wire.

    python scripts/triton/http_sniff.py LISTEN_PORT TARGET_PORT OUT_FILE [SECONDS]

Listens on 127.0.0.1:LISTEN_PORT, forwards every connection to 127.0.0.1:TARGET_PORT, and
writes the first 2 KiB the client sent on its first three connections that start with a POST
(an inference request's headers and the start of its body, non-text bytes escaped) to
OUT_FILE. triton-client-check.sh points a short
perf_analyzer run at it to see which tensor format perf_analyzer's HTTP requests use (its
-v output does not show the requests). Stops on SIGTERM or after SECONDS (default 60).
"""

import asyncio
import signal
import sys

KEEP = 2048


async def main():
    listen, target, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    seen = []

    async def pipe(reader, writer, record=None):
        try:
            while data := await reader.read(65536):
                if record is not None and len(record) < KEEP:
                    record.extend(data[: KEEP - len(record)])
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        record = bytearray() if len(seen) < 64 else None
        if record is not None:
            seen.append(record)
        await asyncio.gather(pipe(client_r, server_w, record), pipe(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    serving = asyncio.ensure_future(server.serve_forever())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
    try:
        await asyncio.wait_for(serving, seconds)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass
    server.close()
    write(out_path, seen)


def write(out_path, seen):
    posts = [rec for rec in seen if rec.startswith(b"POST ")][:3]
    with open(out_path, "w") as f:
        f.write(f"{len(seen)} connections, {len(posts)} of them starting with a POST shown\n")
        for i, rec in enumerate(posts):
            f.write(f"--- connection {i + 1}: first {len(rec)} bytes sent by the client\n")
            f.write(bytes(rec).decode("utf-8", errors="backslashreplace"))
            f.write("\n")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
