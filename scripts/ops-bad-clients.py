#!/usr/bin/env python3
"""Two misbehaving WebSocket clients against one gateway node, so the error
and auth-failure metrics move (scripts/ops-check.sh; the load generator
only sends good traffic):

- a guest that sends a frame that is no JSON (answered bad_request), and a
  request for a room it may not name (bad_request too);
- a client whose token is refused (unauthorized, then close 4001).

  ops-bad-clients.py HOST:PORT

A raw WebSocket client on python3's standard library (RFC 6455: masked
text frames out; the node's unmasked frames are searched as bytes).
Loopback targets only; every read has a timeout.
"""

import base64
import os
import socket
import struct
import sys
import time

DEADLINE = 10.0


def connect(addr):
    host, port = addr.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit(f"ops-bad-clients: {addr} is not a loopback address")
    s = socket.create_connection((host, int(port)), timeout=DEADLINE)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("ops-bad-clients: connection closed during the upgrade")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        sys.exit(f"ops-bad-clients: upgrade refused: {status!r}")
    return s, head.split(b"\r\n\r\n", 1)[1]


def send_text(s, text):
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def wait_for(s, seen, needle):
    """Reads until `needle` is in what the node sent (frames as bytes)."""
    end = time.monotonic() + DEADLINE
    while needle not in seen:
        if time.monotonic() > end:
            sys.exit(f"ops-bad-clients: no {needle!r} from the node; got {seen[-200:]!r}")
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"ops-bad-clients: closed before {needle!r}; got {seen[-200:]!r}")
        seen += chunk
    return seen


def main():
    addr = sys.argv[1]
    s, seen = connect(addr)
    send_text(s, '{"op":"auth","id":1}')
    seen = wait_for(s, seen, b'"op":"ok"')
    send_text(s, "this is not json")
    seen = wait_for(s, seen, b'"bad_request"')
    send_text(s, '{"op":"join","id":2,"room":""}')
    wait_for(s, seen, b'"id":2')
    s.close()

    s, seen = connect(addr)
    send_text(s, '{"op":"auth","id":1,"token":"not-a-token"}')
    wait_for(s, seen, b'"unauthorized"')
    s.close()
    print(f"ops-bad-clients: bad frame, bad request and refused token sent to {addr}")


if __name__ == "__main__":
    main()
