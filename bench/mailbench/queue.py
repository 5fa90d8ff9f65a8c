"""The queue database as an enqueuing service sees it: rows INSERTed with Python's sqlite3."""

import sqlite3
import time

RECIPIENT = '["r@example.com"]'
TEN_YEARS = 10 * 365 * 86400


def body(size=5000):
    """~`size` bytes of text in 72-character lines, like a real message body."""
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod."[:71] + "\n"
    return (line * (size // len(line) + 1))[:size]


BODY = body()


def connect(path, timeout=30.0):
    db = sqlite3.connect(path, timeout=timeout)
    db.execute("PRAGMA busy_timeout = %d" % int(timeout * 1000))
    return db


def copy(src, dst):
    """A consistent copy of a database (WAL included) via SQLite's backup API."""
    a, b = connect(src), connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def fill(path, count, tenants, category="report", send_at=None, text=BODY):
    """`count` rows in one transaction, spread evenly over `tenants`; returns (first id, last id)."""
    db = connect(path)
    with db:
        rows = ((tenants[i % len(tenants)], category, send_at, f"bench {i}", text) for i in range(count))
        db.executemany(
            "INSERT INTO messages (tenant, category, send_at, rcpt_to, subject, text_body) "
            f"VALUES (?, ?, ?, '{RECIPIENT}', ?, ?)", rows)
        last = db.execute("SELECT max(id) FROM messages").fetchone()[0]
    db.close()
    return last - count + 1, last


def fill_scheduled(path, count, tenant):
    """`count` small rows due ten years from now, in one transaction."""
    return fill(path, count, [tenant], category="reminder", send_at=time.time() + TEN_YEARS,
                text="See you in ten years.\n")


class Poller:
    """Cheap reads of drain progress while the daemon works (a reader never blocks it in WAL)."""

    # `+id` keeps SQLite on the small partial index of sent rows instead of walking the
    # table's 5 KB rows by id.
    SENT = "SELECT count(*) FROM messages WHERE sent_at IS NOT NULL AND +id BETWEEN ? AND ?"
    GIVEN_UP = ("SELECT count(*) FROM messages WHERE status IN ('failed', 'expired', 'cancelled') "
                "AND +id BETWEEN ? AND ?")

    def __init__(self, path):
        self.db = connect(path, timeout=5.0)

    def sent(self, first, last):
        return self.db.execute(self.SENT, (first, last)).fetchone()[0]

    def given_up(self, first, last):
        return self.db.execute(self.GIVEN_UP, (first, last)).fetchone()[0]

    def scalar(self, sql, *args):
        return self.db.execute(sql, args).fetchone()[0]

    def close(self):
        self.db.close()
