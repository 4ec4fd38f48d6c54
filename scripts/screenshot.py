"""Screenshot a page with headless Chromium after it has settled (the Dagster UI lays out its
graphs in a web worker, which --screenshot does not wait for). Uses the DevTools protocol.

    python scripts/screenshot.py URL OUTPUT.png [--wait 12] [--size 1600x900]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import websockets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _capture(ws_url: str, wait: float) -> bytes:
    async with websockets.connect(ws_url, max_size=50_000_000) as ws:
        await asyncio.sleep(wait)
        await ws.send(
            json.dumps({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}})
        )
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == 1:
                return base64.b64decode(message["result"]["data"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("output")
    parser.add_argument("--wait", type=float, default=12)
    parser.add_argument("--size", default="1600x900")
    args = parser.parse_args()
    port = _free_port()
    profile = tempfile.mkdtemp()
    chromium = subprocess.Popen(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--window-size={args.size.replace('x', ',')}",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/json/new?{args.url}", method="PUT"
        )
        target = json.load(urllib.request.urlopen(request, timeout=10))
        png = asyncio.run(_capture(target["webSocketDebuggerUrl"], args.wait))
        with open(args.output, "wb") as f:
            f.write(png)
    finally:
        chromium.terminate()
        chromium.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
