"""CPU a large REST body costs on its way through the server's decoder process.

    .venv/bin/python benchmarks/bench_decoder.py [--bodies 300] [--concurrency 4]
        [--rounds 3] [--baseline OTHER_CHECKOUT/src]

``BodyDecoder`` parses ``--bodies`` TF REST JSON bodies of one [1, 3, 224, 224] float
image (3 MB, as a REST client writes it), ``--concurrency`` at a time, as the server's
REST handlers call it.  Prints per body: the wall time, the CPU of this process (the
server's side: the hand-over and the answer) and of the decoder process.  With
``--baseline``, each round also runs the other checkout's code (its ``src`` first on the
Python path, in a child process), the two taking turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from streaminfer.serving.decoder import BodyDecoder
from streaminfer.serving.tfserving_rest import _read_predict_request

IMAGE = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(bodies: int, concurrency: int) -> str:
    body = bytearray(json.dumps({"instances": IMAGE.tolist()}).encode())
    decoder = BodyDecoder()
    try:
        for _ in range(20):  # the process started, its heap grown
            await decoder.decode(_read_predict_request, body, True)
        assert decoder._process is not None and decoder._process.pid is not None
        pid = decoder._process.pid

        async def caller() -> None:
            for _ in range(bodies // concurrency):
                await decoder.decode(_read_predict_request, body, True)

        wall, ours, theirs = time.perf_counter(), time.process_time(), _cpu_seconds(pid)
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        done = bodies // concurrency * concurrency
        wall, ours = time.perf_counter() - wall, time.process_time() - ours
        theirs = _cpu_seconds(pid) - theirs
    finally:
        decoder.close()
    return (
        f"wall {wall / done * 1e3:5.2f} ms, server's side {ours / done * 1e3:5.2f} ms CPU, "
        f"decoder {theirs / done * 1e3:5.2f} ms CPU a body"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src, measured in turns")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.once:
        print(asyncio.run(_measure(args.bodies, args.concurrency)), flush=True)
        return
    trees: dict[str, str | None] = {"this tree": None}
    if args.baseline:
        trees["baseline"] = str(args.baseline.resolve())
    for round_number in range(1, args.rounds + 1):
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": path} if path else None
            command = [sys.executable, __file__, "--once", f"--bodies={args.bodies}",
                       f"--concurrency={args.concurrency}"]  # fmt: skip
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            print(f"round {round_number} {name:9}: {result.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
