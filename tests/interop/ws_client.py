#!/usr/bin/env python3
"""Third-party WebSocket client against a Kizuna relay (issue 4).

Uses the `websockets` package from PyPI, which nobody on the Kizuna project wrote:

1. connecting WITHOUT the `kizuna` subprotocol must be refused during the handshake
   (HTTP 400 with a reason naming the subprotocol);
2. connecting WITH it, then sending garbage (a text frame, binary garbage, an oversized
   binary message) must get that client dropped: the relay answers with an error and/or
   a close frame, or closes the connection — and never hangs.

Usage: ws_client.py ws://HOST:PORT
Prints one line per check and `N passed, N failed`; exits non-zero on any failure.
"""

import asyncio
import sys

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

TIMEOUT = 10


async def refused_without_subprotocol(url):
    try:
        async with websockets.connect(url, open_timeout=TIMEOUT):
            return "connected without the subprotocol"
    except InvalidStatus as e:
        status = e.response.status_code
        body = bytes(e.response.body or b"").decode("utf-8", "replace")
        if status != 400 or "kizuna" not in body:
            return f"refused, but with status {status} and body {body!r}"
        return None


async def dropped_after(url, payload):
    async with websockets.connect(
        url, subprotocols=["kizuna"], open_timeout=TIMEOUT, max_size=None
    ) as ws:
        if ws.subprotocol != "kizuna":
            return f"relay selected subprotocol {ws.subprotocol!r}"
        challenge = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if not isinstance(challenge, bytes):
            return "challenge was not a binary message"
        try:
            await ws.send(payload)
            # Whatever the relay sends before closing (an error message) is fine; it must
            # close within the timeout.
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed:
            return None
        except asyncio.TimeoutError:
            return "the relay kept the connection open"


async def main(url):
    checks = [
        ("no subprotocol is refused with HTTP 400", refused_without_subprotocol(url)),
        ("text frame is dropped", dropped_after(url, "hello relay")),
        ("binary garbage is dropped", dropped_after(url, b"\xc1\xff\x00garbage")),
        ("oversized message is dropped", dropped_after(url, b"\x00" * 300_000)),
    ]
    passed = failed = 0
    for name, check in checks:
        try:
            problem = await check
        except Exception as e:  # any unexpected failure is a failed check
            problem = f"{type(e).__name__}: {e}"
        if problem is None:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}: {problem}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))
