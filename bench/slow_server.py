"""The scale test's server: every chat completion takes DELAY seconds, thousands at once.

An HTTP/1.1 keep-alive server on asyncio protocols (no streams: a few callbacks per request), one
process, one thread. It reads each request fully (Content-Length body, `Expect: 100-continue`
answered), holds it for DELAY seconds with loop.call_later and answers the canned completion.
nginx cannot sleep per request without extra modules, hence this server.

    python slow_server.py DELAY        prints "port N LOOP" once listening; stops on SIGTERM/SIGINT
    GET /stats                         {"connections": N, "requests": N} so far, answered at once

The one rule: nothing blocks the loop; a request costs one timer and one write.
"""

import asyncio
import json
import os
import resource
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import canned_reply  # noqa: E402

REPLY_BODY = canned_reply().encode()
REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
         b"Content-Length: " + str(len(REPLY_BODY)).encode() + b"\r\n\r\n" + REPLY_BODY)
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class SlowHTTP(asyncio.Protocol):
    def __init__(self, delay, counters):
        self.delay = delay
        self.counters = counters
        self.buf = bytearray()
        self.need = -1            # body bytes still expected, -1 while reading a head
        self.transport = None
        self.timers = []

    def connection_made(self, transport):
        self.transport = transport
        self.counters["connections"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        self.transport = None

    def data_received(self, data):
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        self._fail()
                    return
                head = bytes(self.buf[:end]).lower()
                del self.buf[:end + 4]
                if head.startswith(b"get /stats"):
                    self._stats()
                    continue
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        self._fail()       # the clients here all send a Content-Length
                        return
                    elif name == b"expect" and value.strip() == b"100-continue":
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.need = length
            if len(self.buf) < self.need:
                return
            del self.buf[:self.need]
            self.need = -1
            self.counters["requests"] += 1
            self.timers.append(asyncio.get_running_loop().call_later(self.delay, self._answer))

    def _stats(self):
        """GET /stats: the counters, at once (the suite reads them around each client)."""
        body = json.dumps(self.counters).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def _answer(self):
        self.timers.pop(0)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(REPLY)

    def _fail(self):
        if self.transport is not None:
            self.transport.write(BAD)
            self.transport.close()


async def serve(delay):
    loop = asyncio.get_running_loop()
    counters = {"connections": 0, "requests": 0}
    server = await loop.create_server(lambda: SlowHTTP(delay, counters), "127.0.0.1", 0,
                                      backlog=8192, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port} {type(loop).__module__.split('.')[0]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"served {counters['requests']} requests on {counters['connections']} connections",
          file=sys.stderr, flush=True)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:   # uvloop, when installed, handles a burst of 2,048 requests in a third of the time
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(float(sys.argv[1])))


if __name__ == "__main__":
    main()
