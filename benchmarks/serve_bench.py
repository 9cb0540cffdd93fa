"""``textune serve`` under load: requests/s and p50/p99 latency at several client counts, with and without
micro-batching, one text per request.

For each server configuration a fresh ``textune serve`` runs in a subprocess on a free loopback port; after a
warm-up, N client threads (keep-alive connections, one request in flight each) send ``{"texts": [one text]}`` for a
fixed time, cycling through the texts of a CSV file. Every run is bounded: a fixed duration per client count, a
timeout per request, a bounded wait for the server to start; the server is stopped with SIGTERM at the end.

    python benchmarks/serve_bench.py /tmp/bench_run --input examples/data/ag_news_test_500.csv \
        --precision fp32 --duration 20 --out serve_bench.json

The clients run on the same machine as the server, so on a small CPU they take a share of the cores too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
CONFIGS = {
    "batched": [],  # the defaults: --max-batch 64 --max-wait-ms 5
    "unbatched": ["--max-batch", "1"],
    "no_wait": ["--max-wait-ms", "0"],  # batches form only from what queued during the previous pass
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def health(port: int) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def post(port: int, text: str, timeout: float) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=json.dumps({"texts": [text]}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def start_server(run: str, extra: list[str], log_path: Path, timeout: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    argv = [sys.executable, "-m", "textune.cli", "serve", run, "--port", str(port), *extra]
    proc = subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}; see {log_path}")
        try:
            if health(port) == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not answer /health within {timeout} s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def load(port: int, texts: list[str], clients: int, duration: float, timeout: float) -> dict:
    """``clients`` threads sending one text per request for ``duration`` seconds; latencies of the 200s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    batch_sizes: list[list[int]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = time.perf_counter()
    end = start + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        i = k
        try:
            while time.perf_counter() < end:
                body = json.dumps({"texts": [texts[i % len(texts)]]})
                i += clients
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                except OSError:
                    errors[k] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
                    continue
                if resp.status == 200:
                    latencies[k].append(time.perf_counter() - t0)
                    batch_sizes[k].append(int(resp.getheader("X-Batch-Requests", "1")))
                else:
                    errors[k] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 5)
    elapsed = time.perf_counter() - start
    lat = sorted(x for per in latencies for x in per)
    sizes = [x for per in batch_sizes for x in per]
    if not lat:
        return {"clients": clients, "requests": 0, "errors": sum(errors), "seconds": elapsed}
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": sum(errors),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(1000 * lat[len(lat) // 2], 1),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
        "mean_requests_per_pass": round(statistics.fmean(sizes), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory to serve")
    p.add_argument("--input", default="examples/data/ag_news_test_500.csv", help="CSV with the texts to send")
    p.add_argument("--text-column", default="text")
    p.add_argument("--clients", default="1,8,32", help="client counts, comma-separated (default 1,8,32)")
    p.add_argument("--configs", default="batched,unbatched", help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per client count (default 20)")
    p.add_argument("--warmup", type=int, default=20, help="requests sent before measuring (default 20)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="passed to textune serve")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args()

    import pandas as pd

    texts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column].tolist()
    clients = [int(c) for c in args.clients.split(",")]
    extra = ["--precision", args.precision] if args.precision else []
    results = []
    for name in args.configs.split(","):
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_bench_{name}.log"
        proc, port = start_server(args.run, CONFIGS[name] + extra, log_path, timeout=180)
        try:
            for i in range(args.warmup):  # the first passes pay for lazy set-up (allocator, kernels)
                post(port, texts[i % len(texts)], args.timeout)
            for n in clients:
                row = {"config": name, **load(port, texts, n, args.duration, args.timeout)}
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            code = stop_server(proc)
            print(f"{name}: server exited with {code}", flush=True)
    print()
    print("| config | clients | requests/s | p50 ms | p99 ms | requests per forward pass | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['config']} | {r['clients']} | {r.get('requests_per_s', 0)} | {r.get('p50_ms', '-')} | "
            f"{r.get('p99_ms', '-')} | {r.get('mean_requests_per_pass', '-')} | {r['errors']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
