"""Enqueuing services, run as processes of their own next to the daemon (from bench/):

  python3 -m mailbench.clients pickup DB TENANT COUNT OUT
      rows one at a time, each waited for until `sent`
  python3 -m mailbench.clients enqueue DB TENANT STOPFILE MAX_SECONDS OUT
      one row per transaction, as fast as possible, until STOPFILE exists

Each writes its latencies (seconds) as JSON to OUT."""

import json
import os
import sqlite3
import sys
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


def enqueue(path, tenant, stop_file, max_seconds, out):
    """BEGIN; INSERT; COMMIT in a loop until the stop file appears (bounded in time and count)."""
    db = connect(path)
    latencies = []
    deadline = time.monotonic() + max_seconds
    while not os.path.exists(stop_file) and time.monotonic() < deadline and len(latencies) < 1_000_000:
        began = time.perf_counter()
        db.execute("BEGIN")
        db.execute(INSERT, (tenant, "enqueued while draining", BODY))
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - began)
    with open(out, "w") as f:
        json.dump({"latencies": latencies}, f)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "pickup":
        pickup(args[0], args[1], int(args[2]), args[3])
    elif command == "enqueue":
        enqueue(args[0], args[1], args[2], float(args[3]), args[4])
    else:
        sys.exit(f"unknown command {command}")
