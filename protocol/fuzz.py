"""Mutation fuzzer over the golden vectors, for long runs outside CI.

Strategy: take a vector frame, apply a few random mutations (flip, insert, delete, splice
with another vector, rewrite the length prefix), feed it in random chunks to a fresh
Connection in a random role and state, and drain it. Any outcome other than messages,
NEED_DATA, ConnectionClosed or RemoteProtocolError is a bug: the input is printed as hex
and the run exits non-zero.

Run: `python -m protocol.fuzz [--seconds 60] [--seed N]`.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
import traceback

from protocol.connection import Connection, ConnectionClosed, NeedData
from protocol.errors import RemoteProtocolError
from protocol.messages import CaughtUp
from protocol.state import Role
from protocol.vectors.generate import SAMPLES
from protocol.wire import encode_frame


def _connection(rnd: random.Random) -> Connection:
    device, server = Connection(Role.DEVICE), Connection(Role.SERVER)
    if rnd.random() < 0.5:
        server.receive_data(device.send(SAMPLES["hello"]))
        server.next_event()
        device.receive_data(server.send(SAMPLES["welcome"]))
        device.next_event()
        if rnd.random() < 0.5:
            device.receive_data(server.send(CaughtUp(b"cp")))
            device.next_event()
    return rnd.choice([device, server])


def _mutate(rnd: random.Random, data: bytearray, corpus: list[bytes]) -> bytearray:
    for _ in range(rnd.randint(1, 4)):
        choice = rnd.randrange(5)
        position = rnd.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(position, len(data) - 1)] = rnd.randrange(256)
        elif choice == 1:
            data[position:position] = bytes([rnd.randrange(256)])
        elif choice == 2 and data:
            del data[position : position + rnd.randint(1, 8)]
        elif choice == 3:
            other = rnd.choice(corpus)
            start = rnd.randrange(len(other))
            data[position:position] = other[start : start + rnd.randint(1, 32)]
        elif len(data) >= 4:
            data[:4] = struct.pack(">I", rnd.choice([0, len(data) - 4, rnd.randrange(1 << 32)]))
    return data


def _run_one(rnd: random.Random, data: bytes) -> None:
    connection = _connection(rnd)
    position = 0
    while position < len(data):
        step = rnd.randint(1, len(data))
        connection.receive_data(data[position : position + step])
        position += step
        for _ in range(len(data) + 1):
            try:
                event = connection.next_event()
            except RemoteProtocolError:
                return
            if isinstance(event, NeedData | ConnectionClosed):
                break
    connection.receive_data(b"")
    try:
        while not isinstance(connection.next_event(), ConnectionClosed):
            pass
    except RemoteProtocolError:
        return


def main(argv: list[str] | None = None) -> int:
    """Run the mutation fuzzer for ``--seconds``; exit 1 on the first finding, printing its seed."""
    parser = argparse.ArgumentParser(description="Mutation fuzzer for the syncd protocol")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rnd = random.Random(seed)
    corpus = [encode_frame(message) for message in SAMPLES.values()]
    deadline = time.monotonic() + args.seconds
    runs = 0
    while time.monotonic() < deadline:
        data = bytes(_mutate(rnd, bytearray(rnd.choice(corpus)), corpus))
        try:
            _run_one(rnd, data)
        except Exception:
            traceback.print_exc()
            print(f"seed {seed} run {runs}: input {data.hex()}", file=sys.stderr)
            return 1
        runs += 1
    print(f"seed {seed}: {runs} inputs in {args.seconds:.0f} s, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
