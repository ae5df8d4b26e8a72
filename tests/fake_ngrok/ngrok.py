"""A fake `ngrok` 3 agent: what pyngrok 9 reads from the real binary, and real TCP forwarding.

pyngrok starts ``ngrok start --none --log stdout --config PATH`` and then
* reads logfmt lines from stdout until it has seen ``starting web service`` (with ``addr=``, the local
  agent API), ``client session established`` and ``tunnel session started``, and the API answers
  ``GET /api/endpoints`` (config version 3) or ``GET /api/tunnels`` (version 2) with 200;
* creates a tunnel with ``POST`` on that path (v3 body: ``name`` and ``upstream.url``; v2: ``addr``),
  lists them with ``GET`` and closes one with ``DELETE`` on the returned ``uri``.

The "public" URL is a loopback port whose connections are forwarded byte for byte to the upstream, so
HTTP/1.1 and HTTP/2 (gRPC) both pass, as through a real tunnel. Like the real agent, it refuses to start
without an authtoken (config file ``agent.authtoken``, ``--authtoken`` or ``NGROK_AUTHTOKEN``): it logs
an ``lvl=eror`` line with ``err=`` and exits 1. ``FAKE_NGROK_RECORD`` names a file to which each start
appends a JSON line (argv, pid, session id, the authtoken found, config version), so a test can
check how it was started. Standard library and PyYAML
only (PyYAML is a dependency of pyngrok).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

import yaml

VERSION = "3.19.0"


def log(level: str, msg: str, **fields: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")
    extra = "".join(f" {k}={json.dumps(v) if (' ' in v or not v) else v}" for k, v in fields.items())
    sys.stdout.write(f't={now} lvl={level} msg="{msg}"{extra}\n')
    sys.stdout.flush()


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


class Agent:
    def __init__(self, config: dict[str, Any], config_version: str) -> None:
        self.config_version = config_version
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, asyncio.AbstractServer] = {}

    async def forward(self, upstream: tuple[str, int], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        log("info", "join connections", obj="join", l=str(writer.get_extra_info("peername")))
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError as exc:
            log("warn", "failed to dial upstream", err=str(exc))
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("name") or f"tunnel-{uuid.uuid4()}")
        if name in self.tunnels:
            return 400, {"error_code": 102, "msg": f"tunnel {name!r} already exists"}
        target = (body.get("upstream") or {}).get("url") or body.get("addr")
        if not target:
            return 400, {"error_code": 102, "msg": "no upstream url or addr given"}
        target = str(target)
        parts = urlsplit(target if "://" in target else f"tcp://{target if ':' in target else 'localhost:' + target}")
        host = parts.hostname or "localhost"
        upstream = ("127.0.0.1" if host == "localhost" else host, parts.port or 80)
        server = await asyncio.start_server(lambda r, w: self.forward(upstream, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        public = f"http://127.0.0.1:{port}"
        segment = "endpoints" if self.config_version == "3" else "tunnels"
        data = {"ID": uuid.uuid4().hex, "name": name, "uri": f"/api/{segment}/{name}", "public_url": public,
                "url": public, "proto": "http", "upstream": {"url": target},
                "config": {"addr": target, "inspect": True}, "metrics": {"conns": {"count": 0}}}
        self.tunnels[name] = data
        self.servers[name] = server
        log("info", "started tunnel", obj="tunnels", name=name, addr=target, url=public)
        return 201, data

    async def delete(self, name: str) -> tuple[int, dict[str, Any] | None]:
        if name not in self.tunnels:
            return 404, {"error_code": 100, "msg": f"tunnel {name!r} not found"}
        del self.tunnels[name]
        server = self.servers.pop(name)
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        log("info", "stopped tunnel", obj="tunnels", name=name)
        return 204, None

    async def api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
            raw = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            body = json.loads(raw) if raw else {}
            path = path.split("?")[0].rstrip("/")
            status, data = await self.route(method, path, body)
        except Exception as exc:
            status, data = 400, {"error_code": 100, "msg": f"bad request: {exc}"}
        payload = b"" if data is None else json.dumps(data).encode()
        reason = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()

    async def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        for segment in ("endpoints", "tunnels"):
            base = f"/api/{segment}"
            if path == base and method == "GET":
                return 200, {segment: list(self.tunnels.values()), "uri": base}
            if path == base and method == "POST":
                return await self.create(body)
            if path.startswith(base + "/"):
                name = path[len(base) + 1:]
                if method == "DELETE":
                    return await self.delete(name)
                if method == "GET" and name in self.tunnels:
                    return 200, self.tunnels[name]
                return 404, {"error_code": 100, "msg": f"tunnel {name!r} not found"}
        return 404, {"error_code": 100, "msg": f"no route {method} {path}"}


async def serve(config: dict[str, Any], config_version: str) -> None:
    agent = Agent(config, config_version)
    web = await asyncio.start_server(agent.api, "127.0.0.1", 0)
    addr = f"127.0.0.1:{web.sockets[0].getsockname()[1]}"
    log("info", "open config file", path=str(config.get("_path", "")), err="nil")
    log("info", "starting web service", obj="web", addr=addr, allow_hosts="[]")
    log("info", "client session established", obj="tunnels.session")
    log("info", "tunnel session started", obj="tunnels.session")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["version"]):
        print(f"ngrok version {VERSION}")
        return 0
    if argv[:2] == ["config", "add-authtoken"]:
        print("Authtoken saved to configuration file")
        return 0
    if argv[:1] != ["start"]:
        print(f"fake ngrok: unsupported arguments {argv}", file=sys.stderr)
        return 2
    path = option(argv, "--config")
    config: dict[str, Any] = {}
    if path:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
        config["_path"] = path
    version = str(config.get("version", "2"))
    authtoken = option(argv, "--authtoken") or (config.get("agent") or {}).get("authtoken") \
        or config.get("authtoken") or os.environ.get("NGROK_AUTHTOKEN")
    record = os.environ.get("FAKE_NGROK_RECORD")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"argv": argv, "pid": os.getpid(), "sid": os.getsid(0), "authtoken": authtoken,
                                "config_version": version}) + "\n")
    if not authtoken:
        log("eror", "failed to reconnect session", obj="tunnels.session",
            err="authentication failed: Usage of ngrok requires a verified account and authtoken.")
        return 1
    asyncio.run(serve(config, version))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
