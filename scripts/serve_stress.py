#!/usr/bin/env python3
"""Hostile-client checks of `skymoe serve` (issue 16's figures), standard library only.

  python3 scripts/serve_stress.py [--skymoe build/skymoe] [--model DIR] [--slow 500] [--load-seconds 60]

Without --model it makes a tiny random model with a SentencePiece tokenizer trained on the fortunes.
It starts the server itself (to read its memory from /proc) and reports:
  1. slow clients: N connections drip a byte every 3 s (half into the request head, half into a
     body); meanwhile /health and a short completion are timed every second;
  2. big prompts: 8 concurrent requests with a 1 MiB text prompt; the server's peak and final RSS;
  3. load: 64 concurrent clients (streaming and not) for --load-seconds; every reply must be 200.
"""
import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time


def rss_mb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def request(port, method, path, body=None, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    m = re.match(rb"HTTP/1\.1 (\d+)", out)
    return int(m.group(1)) if m else -1, out


def make_model(skymoe, d, vocab=2048):
    # The tiny preset with a vocabulary a tokenizer trained on the fortunes can fill.
    base = d + "-base"
    subprocess.run([skymoe, "init", "--preset", "tiny", "--out", base], check=True, stdout=subprocess.DEVNULL)
    cfg = json.load(open(os.path.join(base, "config.json")))
    cfg["vocab_size"] = vocab
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    subprocess.run([skymoe, "init", "--config", os.path.join(d, "config.json"), "--out", d], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([skymoe, "tokenize", "--input", "/usr/share/games/fortunes", "--out", os.path.join(d, "tok.bin"),
                    "--train-tokenizer", os.path.join(d, "tokenizer.model"), "--vocab-size", str(vocab)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def slow_clients(port, n, seconds):
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        if i % 2:  # a whole head, then a body dripped
            s.send(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
        else:
            s.send(b"G")
        socks.append(s)
    worst_health = worst_completion = 0.0
    failures = 0
    t_end = time.time() + seconds
    next_drip = time.time() + 3
    while time.time() < t_end:
        if time.time() >= next_drip:
            for s in socks:
                try:
                    s.send(b" ")
                except OSError:
                    pass
            next_drip += 3
        t0 = time.time()
        st, _ = request(port, "GET", "/health", timeout=10)
        worst_health = max(worst_health, time.time() - t0)
        t0 = time.time()
        st2, _ = request(port, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 8}, timeout=10)
        worst_completion = max(worst_completion, time.time() - t0)
        failures += (st != 200) + (st2 != 200)
        time.sleep(1)
    closed = 0
    for s in socks:
        try:
            r, _, _ = select.select([s], [], [], 0)
            if r and s.recv(4096, socket.MSG_PEEK) is not None:
                closed += 1
        except OSError:
            closed += 1
        s.close()
    return worst_health, worst_completion, failures, closed


def big_prompts(port, pid, n=8, size=1 << 20):
    text = ("All work and no play makes Jack a dull boy. " * (size // 44 + 1))[:size]
    results = []

    def one():
        results.append(request(port, "POST", "/v1/completions", {"prompt": text, "max_tokens": 4}, timeout=120)[0])

    peak = rss_mb(pid, "VmRSS")
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid, "VmRSS"))
        time.sleep(0.01)
    for t in threads:
        t.join()
    return results, peak, rss_mb(pid, "VmRSS")


def load(port, clients, seconds):
    counts = {"ok": 0, "bad": 0}
    lock = threading.Lock()
    t_end = time.time() + seconds

    def worker(i):
        while time.time() < t_end:
            body = {"prompt": f"Client {i} says", "max_tokens": 16, "stream": bool(i % 2)}
            try:
                st, out = request(port, "POST", "/v1/completions", body, timeout=60)
                ok = st == 200 and (not body["stream"] or b"data: [DONE]" in out)
            except OSError:
                ok = False
            with lock:
                counts["ok" if ok else "bad"] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skymoe", default="build/skymoe")
    ap.add_argument("--model")
    ap.add_argument("--slow", type=int, default=500, help="slow clients")
    ap.add_argument("--slow-seconds", type=float, default=20)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="skymoe-stress-")
    model = a.model or os.path.join(tmp, "model")
    if not a.model:
        print("making a tiny model with a tokenizer ...", flush=True)
        make_model(a.skymoe, model)
    srv = subprocess.Popen([a.skymoe, "serve", "--model", model, "--port", "0", "--threads", str(a.threads),
                            "--max-body-bytes", str(4 << 20), "--quiet"], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        m = re.search(r":(\d+)", line)
        if not m:
            sys.exit(f"serve did not start: {line!r}")
        port = int(m.group(1))
        print(f"server pid {srv.pid} on port {port}, RSS {rss_mb(srv.pid, 'VmRSS'):.0f} MB", flush=True)

        h, c, fails, _ = slow_clients(port, a.slow, a.slow_seconds)
        print(f"1. {a.slow} slow clients for {a.slow_seconds:.0f} s: worst /health {h*1000:.0f} ms, worst completion "
              f"{c*1000:.0f} ms, failed replies {fails}", flush=True)

        statuses, peak, after = big_prompts(port, srv.pid)
        print(f"2. 8 concurrent 1 MiB prompts: statuses {sorted(set(statuses))}, peak RSS {peak:.0f} MB, "
              f"after {after:.0f} MB", flush=True)

        counts = load(port, 64, a.load_seconds)
        print(f"3. 64 clients for {a.load_seconds:.0f} s: {counts['ok']} ok, {counts['bad']} failed; "
              f"RSS after {rss_mb(srv.pid, 'VmRSS'):.0f} MB", flush=True)
        ok = fails == 0 and h < 2 and c < 2 and peak < 300 and counts["bad"] == 0
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        srv.terminate()
        srv.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
