#!/usr/bin/env python3
"""Hostile clients for benches/abuse.sh: each attack runs against one
gateway node (loopback only) for a bounded time, reconnecting whenever the
node closes it, and prints one JSON line of what it did.

  abuse_attacks.py ATTACK HOST:PORT SECONDS [--source IP]

Attacks:
  flood      20 connections writing `send` frames as fast as the socket
             takes them (replies read and dropped), back after every 4029.
  nonreader  50 connections that pipeline three 500-message `history`
             requests for a room of large messages and never read.
  stalled    300 connections that each send the header and 100 bytes of a
             64 KiB frame, then nothing (from ten addresses, --source and
             the nine after it).
  storm      8 workers opening a WebSocket and closing it at once, as fast
             as they can, all from one source address.
"""

import asyncio
import base64
import json
import os
import sys
import time

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(obj) -> bytes:
    return frame(json.dumps(obj, separators=(",", ":")).encode())


class Stats:
    def __init__(self):
        self.connects = 0
        self.refused = 0
        self.frames_sent = 0
        self.bytes_sent = 0


async def upgrade(addr, source, stats):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), local_addr=(source, 0) if source else None
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(HANDSHAKE.format(host=addr, key=key).encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    stats.connects += 1
    if not head.startswith(b"HTTP/1.1 101"):
        stats.refused += 1
        writer.close()
        return None
    return reader, writer


async def discard(reader):
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, asyncio.IncompleteReadError):
        pass


async def flood_one(addr, source, deadline, stats):
    burst = b"".join(
        text({"op": "send", "room": "flood", "body": {"junk": "x" * 64}}) for _ in range(200)
    )
    while time.monotonic() < deadline:
        try:
            conn = await upgrade(addr, source, stats)
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            reader, writer = conn
            writer.write(text({"op": "auth", "id": 1}) + text({"op": "join", "id": 2, "room": "flood"}))
            sink = asyncio.create_task(discard(reader))
            while time.monotonic() < deadline and not sink.done():
                writer.write(burst)
                await writer.drain()
                stats.frames_sent += 200
                stats.bytes_sent += len(burst)
            sink.cancel()
            writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.01)


async def nonreader_one(addr, source, deadline, stats):
    reqs = b"".join(
        text({"op": "history", "id": 10 + i, "room": "big", "limit": 500}) for i in range(3)
    )
    while time.monotonic() < deadline:
        try:
            conn = await upgrade(addr, source, stats)
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            reader, writer = conn
            writer.write(text({"op": "auth", "id": 1}) + reqs)
            await writer.drain()
            stats.frames_sent += 4
            # Never read: wait until the node gives up on us (or time is up).
            while time.monotonic() < deadline and not writer.is_closing():
                try:
                    writer.write(text({"op": "ping"}))
                    await asyncio.wait_for(writer.drain(), 1.0)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(1.0)
                if reader.at_eof():
                    break
            writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)


async def stalled_one(addr, source, deadline, stats):
    # A 64 KiB text frame's header and mask, then 100 bytes of it.
    partial = bytes([0x81, 0x80 | 127]) + (65536).to_bytes(8, "big") + os.urandom(4) + b"x" * 100
    while time.monotonic() < deadline:
        try:
            conn = await upgrade(addr, source, stats)
            if conn is None:
                await asyncio.sleep(0.05)
                continue
            reader, writer = conn
            writer.write(text({"op": "auth", "id": 1}) + partial)
            await writer.drain()
            stats.frames_sent += 1
            try:
                await asyncio.wait_for(discard(reader), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)


async def storm_one(addr, source, deadline, stats):
    while time.monotonic() < deadline:
        try:
            conn = await upgrade(addr, source, stats)
            if conn is None:
                continue
            _, writer = conn
            writer.write(frame(b"\x03\xe8", opcode=0x8))
            writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.001)


ATTACKS = {
    "flood": (flood_one, 20),
    "nonreader": (nonreader_one, 50),
    "stalled": (stalled_one, 300),
    "storm": (storm_one, 8),
}


async def main():
    attack, addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    source = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--source" else None
    host = addr.rsplit(":", 1)[0]
    if not host.startswith("127."):
        sys.exit("loopback targets only")
    one, n = ATTACKS[attack]
    stats = Stats()
    deadline = time.monotonic() + seconds
    # Stalled frames are about what a half-sent frame holds, not the
    # connection rate: spread over ten source addresses (from --source up)
    # so the per-address rate lets all 300 in instead of making a storm.
    spread = 10 if attack == "stalled" and source else 1
    def source_of(i):
        if spread == 1:
            return source
        a, b, c, d = source.split(".")
        return f"{a}.{b}.{c}.{int(d) + i % spread}"
    tasks = [asyncio.create_task(one(addr, source_of(i), deadline, stats)) for i in range(n)]
    # Every task checks the deadline; this bounds the run even if one hangs.
    await asyncio.wait(tasks, timeout=seconds + 15)
    for t in tasks:
        t.cancel()
    print(json.dumps({"attack": attack, "seconds": seconds, **vars(stats)}))


if __name__ == "__main__":
    asyncio.run(main())
