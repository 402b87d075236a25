"""Where a ``trio-gm bench --processes`` member spends its time, by part.

Profile one member process, then read the profile with this script::

    trio-gm bench --members 3 --seconds 14 --processes --json &
    sleep 4
    py-spy record --gil --rate 200 --duration 8 --format raw -o member.raw \\
        --pid "$(pgrep -f 'trio_gm.cli bench-worker' | sed -n 2p)"
    python benchmarks/pyspy_breakdown.py member.raw

``--gil`` keeps the samples where the process runs Python (system calls
release the GIL: their time is the process's system CPU time, in
``/proc/PID/stat``). Each sample goes to one part: the codec if it is under
``Codec.decode`` or ``Codec.encode``, else the innermost frame of a known
file. The parts are a guide to the order of magnitude, not to the last
percent.
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Iterator

_FRAME = re.compile(r"(.*) \((.*?):(\d+)\)$")

#: (part of a file's path, part) in the order they are tried, innermost frame first.
_FILES = (
    ("trio_gm/_bench.py", "bench: flood loop and callback"),
    ("trio_gm/ring/member.py", "ring: member actor (dispatch, deliver)"),
    ("trio_gm/ring/", "ring: core and state"),
    ("trio_gm/node.py", "node.py: Member.broadcast"),
    ("trio_gm/actor/", "actor: mailbox, loop, post"),
    ("trio_gm/transport/frames.py", "transport: records"),
    ("trio_gm/transport/", "transport: tcp.py and the rest"),
    ("trio_gm/", "trio_gm: ids and the rest"),
    ("trio/_socket.py", "trio: sockets"),
    ("trio/_highlevel_socket.py", "trio: sockets"),
    ("trio/_core/_io", "trio: I/O manager"),
    ("trio/", "trio: scheduler, cancel scopes, checkpoints"),
    ("outcome/", "trio: scheduler, cancel scopes, checkpoints"),
)


def samples(path: str) -> Iterator[tuple[list[tuple[str, str]], int]]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, count = line.rsplit(" ", 1)
            frames = []
            for frame in stack.split(";"):
                match = _FRAME.match(frame)
                frames.append((match.group(1), match.group(2)) if match else (frame, ""))
            yield frames, int(count)


def part(frames: list[tuple[str, str]]) -> str:
    functions = {function for function, _ in frames}
    if "WorkerThread._work" in functions:
        return "other threads (the store's)"
    if "Codec.decode" in functions:
        return "codec: decode (msgpack, hooks, validation)"
    if "Codec.encode" in functions:
        return "codec: encode (msgpack, hooks)"
    for _function, file in reversed(frames):
        if "attrs generated" in file and "trio_gm" in file:
            return "trio_gm: ids and the rest"
        for fragment, name in _FILES:
            if fragment in file:
                return name
    return "other: " + frames[-1][0]


def main(path: str) -> None:
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in samples(path):
        total += count
        parts[part(frames)] += count
    print(f"{total} samples")
    for name, count in parts.most_common():
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
