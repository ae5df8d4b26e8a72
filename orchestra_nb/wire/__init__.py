"""The wire: protobuf messages (header + opaque docs payload), the docs codec and gRPC options.

Nothing here unpickles or evaluates what it receives (DESIGN.md decision 6).
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["grpc_options"]


def grpc_options(max_message: int) -> list[tuple[str, Any]]:
    """Channel and server options for every gRPC hop of ours.

    Message limits are explicit (gRPC's default is 4 MB). Large HTTP/2 frames and a large, fixed flow-
    control window (instead of bandwidth-delay probing that starts small) roughly halve the time of a
    multi-megabyte message on loopback here; `ORCHESTRA_GRPC_TUNING=0` turns that part off.
    """
    max_message = max(max_message, 4 * 1024 * 1024)  # never below gRPC's default: Info answers need room
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
    ]
    if os.environ.get("ORCHESTRA_GRPC_TUNING", "1") != "0":
        options += [
            ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 64 * 1024 * 1024),
        ]
    return options
