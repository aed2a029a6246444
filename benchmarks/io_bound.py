"""I/O-bound benchmark: per-row HTTP requests to a local server that takes
50 ms per request. Serial pandas vs threads vs ``async def``, side by side.

Usage::

    python benchmarks/io_bound.py [--rows 400] [--output docs/io_benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import threading
import time
import urllib.request

import pandas as pd

import pandas_parallel

LATENCY = 0.05


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(LATENCY)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    host, port = "127.0.0.1", server.server_address[1]

    def fetch(key):
        with urllib.request.urlopen(f"{base}/{key}", timeout=30) as response:
            return response.read().decode()

    async def fetch_async(key):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /{key} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data.split(b"\r\n\r\n", 1)[1].decode()

    keys = pd.Series([f"k{i}" for i in range(args.rows)])
    sample = keys.head(max(1, args.rows // 10))
    began = time.perf_counter()
    expected = sample.map(fetch)
    serial = (time.perf_counter() - began) * len(keys) / len(sample)
    rows = [("serial pandas `s.map(fetch)`", serial)]
    for label, call in [
        ("processes (default loky, 2 workers)", lambda: keys.parallel.map(fetch)),
        ("threads `s.parallel(backend='threading', n_jobs=50).map(fetch)`",
         lambda: keys.parallel(backend="threading", n_jobs=50).map(fetch)),
        ("async `s.parallel.map(fetch_async, concurrency=100)`",
         lambda: keys.parallel.map(fetch_async, concurrency=100)),
    ]:
        began = time.perf_counter()
        result = call()
        rows.append((label, time.perf_counter() - began))
        pd.testing.assert_series_equal(result.head(len(sample)), expected)
    server.shutdown()
    lines = [f"{args.rows} requests, {LATENCY * 1000:.0f} ms each, to a server on "
             "127.0.0.1 (serial time extrapolated from a tenth of the rows)", "",
             "| how | seconds | speed-up |", "|---|---|---|"]
    lines += [f"| {label} | {seconds:.2f} | {serial / seconds:.1f}x |" for label, seconds in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(table)


if __name__ == "__main__":
    pandas_parallel.config(progress=False)
    main()
