"""A search client in a process of its own (`python -m benchmarks.reader`),
for searches timed while the benchmark's own process loads the server: in
that process they would also wait for its event loop, busy building and
sending batches, and the figure would be partly the client's (measured
once at 100k: p50 14.7 ms in the loading process against 13.0 to 13.5 ms
here, the same server and load).

Reads one JSON line from stdin, `{"address", "keys", "tenants",
"dimension"}`; then searches SEMANTIC top 5 with a random unit vector for
a random tenant (`benchmarks.memory.tenant_metadata`), one at a time,
until stdin closes; then prints the latencies in ms as one JSON list.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import grpc
import numpy as np

from benchmarks.memory import tenant_metadata
from memoryd.v1 import memory_pb2, memory_pb2_grpc


def main() -> int:
    config = json.loads(sys.stdin.readline())
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((256, config["dimension"]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    requests = [
        memory_pb2.SearchMemoriesRequest(
            mode=memory_pb2.SEMANTIC, top_k=5, query_embedding=v.tolist()
        )
        for v in vectors
    ]
    keys, tenants = config["keys"], config["tenants"]
    pick = random.Random(3)
    took: list[float] = []
    with grpc.insecure_channel(config["address"]) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        while not stop.is_set():
            request = requests[pick.randrange(len(requests))]
            metadata = tenant_metadata(keys, pick.randrange(tenants))
            began = time.perf_counter()
            stub.SearchMemories(request, metadata=metadata, timeout=60)
            took.append((time.perf_counter() - began) * 1e3)
    print(json.dumps(took))
    return 0


if __name__ == "__main__":
    sys.exit(main())
