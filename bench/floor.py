"""The transport floor: a bare grpcio echo server in its own process (run as a module)."""

from __future__ import annotations

import asyncio
import sys

import grpc

from orchestra_nb.wire import grpc_options


async def main(port: int) -> None:
    server = grpc.aio.server(options=grpc_options(1 << 30))

    async def echo(request: bytes, context: object) -> bytes:
        return request

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
