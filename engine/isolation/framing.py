"""Messages between the worker and its backend process: pickles on a socket pair.

A message is a header (payload size, buffer count, buffer sizes), the pickle
(protocol 5), then each out-of-band buffer. Array buffers of 64 KiB or more
travel out of band, straight from the array and into the buffer the received
array keeps.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

# Buffers at least this large are sent as their own message instead of being
# copied into the pickle; below it one message per call is cheaper.
_OUT_OF_BAND_MIN_BYTES = 64 * 1024
_HEADER = struct.Struct("<QI")


def send(sock: socket.socket, message: Any) -> None:
    """Header (payload size, buffer count, buffer sizes), pickle, then each buffer."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < _OUT_OF_BAND_MIN_BYTES:
            return True  # serialized in-band
        buffers.append(raw)
        return False

    payload = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    sizes = [b.nbytes for b in buffers]
    sock.sendall(
        _HEADER.pack(len(payload), len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes) + payload
    )
    for raw in buffers:
        sock.sendall(raw)


def recv_exactly(sock: socket.socket, size: int) -> bytearray:
    # bytearrays keep received arrays writable, as a backend's own results are.
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the other end closed the connection")
        got += n
    return buffer


def recv(sock: socket.socket) -> Any:
    length, count = _HEADER.unpack(recv_exactly(sock, _HEADER.size))
    frame = recv_exactly(sock, 8 * count + length)
    sizes = struct.unpack_from(f"<{count}Q", frame)
    buffers = [recv_exactly(sock, size) for size in sizes]
    return pickle.loads(memoryview(frame)[8 * count :], buffers=buffers)
