"""Enqueuing services, run as processes of their own next to the daemon (from bench/):

  python3 -m mailbench.clients pickup DB TENANT COUNT OUT
      rows one at a time, each waited for until `sent`
  python3 -m mailbench.clients enqueue DB TENANT STOPFILE MAX_SECONDS OUT [SEND_AT [SYNCHRONOUS]]
      one row per transaction, as fast as possible, until STOPFILE exists (SEND_AT: Unix
      seconds for every row, "" for now; SYNCHRONOUS: the connection's PRAGMA synchronous)
  python3 -m mailbench.clients get PORT TOKEN_FILE FIRST LAST RATE CONNECTIONS STOPFILE MAX_SECONDS OUT
      GET /v1/messages/{id} of random ids FIRST..LAST at RATE requests/s in all, spread over
      CONNECTIONS keep-alive connections, until STOPFILE exists

Each writes its latencies (seconds) as JSON to OUT."""

import http.client
import json
import os
import random
import sqlite3
import sys
import threading
import time

from .queue import BODY, RECIPIENT

INSERT = ("INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) "
          f"VALUES (?, 'report', '{RECIPIENT}', ?, ?)")


def connect(path):
    # isolation_level=None: we write BEGIN and COMMIT ourselves, as an enqueuer would.
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def pickup(path, tenant, count, out):
    """Insert-commit to `sent`, with the daemon idle before each row."""
    db = connect(path)
    latencies = []
    for i in range(count):
        time.sleep(0.05)  # let the daemon go idle again
        db.execute("BEGIN")
        row = db.execute(INSERT, (tenant, f"pickup {i}", "ping\n")).lastrowid
        db.execute("COMMIT")
        committed = time.perf_counter()
        deadline = committed + 10
        latency = None
        while time.perf_counter() < deadline:
            status = db.execute("SELECT status FROM messages WHERE id = ?", (row,)).fetchone()[0]
            if status == "sent":
                latency = time.perf_counter() - committed
                break
            if status in ("failed", "expired", "cancelled"):
                break
            time.sleep(0.001)
        latencies.append(latency)  # None: not sent within 10 s
    with open(out, "w") as f:
        json.dump({"latencies": latencies}, f)


SCHEDULED_INSERT = ("INSERT INTO messages (tenant, category, send_at, rcpt_to, subject, text_body) "
                    f"VALUES (?, 'report', ?, '{RECIPIENT}', ?, ?)")


def enqueue(path, tenant, stop_file, max_seconds, out, send_at=None, synchronous=None):
    """BEGIN; INSERT; COMMIT in a loop until the stop file appears (bounded in time and count).
    `send_at` (rows due later: the daemon leaves them alone) and `synchronous` are for bench/api."""
    db = connect(path)
    if synchronous:
        db.execute(f"PRAGMA synchronous = {synchronous}")
    latencies = []
    began_at = time.time()
    deadline = time.monotonic() + max_seconds
    while not os.path.exists(stop_file) and time.monotonic() < deadline and len(latencies) < 1_000_000:
        began = time.perf_counter()
        db.execute("BEGIN")
        if send_at is None:
            db.execute(INSERT, (tenant, "enqueued while draining", BODY))
        else:
            db.execute(SCHEDULED_INSERT, (tenant, send_at, "enqueued directly", BODY))
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - began)
    with open(out, "w") as f:
        json.dump({"latencies": latencies, "began": began_at, "ended": time.time()}, f)


def get(port, token_file, first, last, rate, connections, stop_file, max_seconds, out):
    """`GET /v1/messages/{id}` at a steady rate (open loop: each request has its slot in a fixed
    schedule, and its latency counts from that slot, so a slow answer also delays the next ones'
    numbers rather than hiding them). One thread per keep-alive connection."""
    with open(token_file) as f:
        token = f.readline().strip()
    headers = {"Authorization": f"Bearer {token}"}
    interval = connections / rate
    start = time.perf_counter() + 0.01
    deadline = time.monotonic() + max_seconds
    results = [[] for _ in range(connections)]  # (latency from slot, service time, status)

    def worker(n):
        rng = random.Random(n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        slot = start + n * interval / connections
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            wait = slot - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            try:
                conn.request("GET", f"/v1/messages/{rng.randint(first, last)}", headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                status = f"{type(error).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            done = time.perf_counter()
            results[n].append((done - slot, done - sent, status))
            slot += interval
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [r for part in results for r in part]
    with open(out, "w") as f:
        json.dump({"latencies": [r[0] for r in rows if r[2] == 200], "service": [r[1] for r in rows if r[2] == 200],
                   "errors": [str(r[2]) for r in rows if r[2] != 200], "requests": len(rows)}, f)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "pickup":
        pickup(args[0], args[1], int(args[2]), args[3])
    elif command == "enqueue":
        enqueue(args[0], args[1], args[2], float(args[3]), args[4],
                float(args[5]) if len(args) > 5 and args[5] else None, args[6] if len(args) > 6 else None)
    elif command == "get":
        get(int(args[0]), args[1], int(args[2]), int(args[3]), float(args[4]), int(args[5]), args[6], float(args[7]),
            args[8])
    else:
        sys.exit(f"unknown command {command}")
