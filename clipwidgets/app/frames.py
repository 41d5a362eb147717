"""Checks on the websocket messages a page sends, before the widget layer sees them.

A page only ever sends widget traffic: kernel and comm-info requests, and comm open/message/close.
Anything else, and any message that is not well formed (not JSON, a binary frame whose offset
table does not fit the frame, a header without a message type, an oversized frame), is refused;
the server then closes that one websocket. In particular a binary frame announcing billions of
buffers is refused by arithmetic on its length, before anything is allocated.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = ["ALLOWED_MESSAGES", "ALLOWED_TARGETS", "MAX_BUFFERS", "frame_problem", "message_problem"]

ALLOWED_MESSAGES = frozenset({"kernel_info_request", "comm_info_request", "comm_open", "comm_msg",
                              "comm_close"})
ALLOWED_TARGETS = frozenset({"jupyter.widget", "solara.control"})
MAX_BUFFERS = 64


def frame_problem(frame: str | bytes | None, *, max_bytes: int) -> str | None:
    """Why `frame` must be refused, or None when it is a well-formed widget message."""
    if frame is None:
        return "empty frame"
    if len(frame) > max_bytes:
        return f"frame of {len(frame)} bytes exceeds the limit of {max_bytes}"
    text: str | bytes = frame
    if isinstance(frame, bytes):
        parsed = _binary_json(frame)
        if isinstance(parsed, str):
            return parsed
        text = parsed
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    return message_problem(message)


def message_problem(message: Any) -> str | None:
    """Why a decoded message must be refused, or None."""
    if not isinstance(message, dict):
        return "not a JSON object"
    header, content = message.get("header"), message.get("content")
    if not isinstance(header, dict) or not isinstance(content, dict):
        return "header or content missing"
    msg_type = header.get("msg_type")
    if msg_type not in ALLOWED_MESSAGES:
        return f"message type {str(msg_type)[:40]!r} is not allowed"
    if not isinstance(header.get("msg_id", ""), str) or not isinstance(message.get("channel", "shell"), str):
        return "malformed header"
    for key in ("parent_header", "metadata"):
        if not isinstance(message.get(key, {}), dict):
            return f"{key} is not an object"
    is_comm = msg_type in ("comm_open", "comm_msg", "comm_close")
    well_formed = isinstance(content.get("comm_id"), str) and isinstance(content.get("data", {}), dict)
    if is_comm and not well_formed:
        return "comm message without comm_id or data"
    if msg_type == "comm_open" and content.get("target_name") not in ALLOWED_TARGETS:
        return f"comm target {str(content.get('target_name'))[:40]!r} is not allowed"
    return None


def _binary_json(frame: bytes) -> bytes | str:
    """The JSON part of a binary frame, or why the frame is malformed."""
    if len(frame) < 8:
        return "binary frame too short"
    (count,) = struct.unpack("!I", frame[:4])
    if not 1 <= count <= MAX_BUFFERS or 4 * (count + 1) > len(frame):
        return "binary frame with an impossible buffer count"
    offsets = struct.unpack(f"!{count}I", frame[4:4 * (count + 1)])
    if offsets[0] != 4 * (count + 1) or any(b < a for a, b in zip(offsets, offsets[1:], strict=False)) \
            or offsets[-1] > len(frame):
        return "binary frame with inconsistent offsets"
    end = offsets[1] if count > 1 else len(frame)
    return frame[offsets[0]:end]
