"""A real HTTP server on 127.0.0.1 whose every response takes ``latency``
seconds: the stand-in for a web API in the I/O tests and benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
import urllib.request
from collections.abc import Iterator


def _handler(latency: float) -> type[http.server.BaseHTTPRequestHandler]:
    class SlowHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(latency)  # the server's simulated work
            body = f"echo:{self.path.lstrip('/')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return SlowHandler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: hundreds of clients connect at once


@contextlib.contextmanager
def slow_server(latency: float) -> Iterator[str]:
    """Serve on a free port; yield the base URL; stop and close on exit.

    ``GET /<key>`` answers ``echo:<key>``.
    """
    server = _Server(("127.0.0.1", 0), _handler(latency))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(base: str, key: object) -> str:
    """Blocking ``GET <base>/<key>``: the body."""
    with urllib.request.urlopen(f"{base}/{key}", timeout=30) as response:
        return response.read().decode()


async def get_async(base: str, key: object) -> str:
    """``GET <base>/<key>`` on asyncio streams (no client library): the body."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /{key} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return response.split(b"\r\n\r\n", 1)[1].decode()
