"""The measurements, one function each; `Bench.round()` runs them all once, in a fixed order,
so that every round puts the engine and its peers through the same moment of the machine."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback

from . import queue
from .engine import DaemonRun, Engine
from .peers import PostfixRelay, openssl_sign_seconds, wire
from .procs import BenchError, Cleanup, log

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ONE = ["bench"]
HUNDRED = [f"t{i:03d}" for i in range(100)]
THOUSAND = [f"t{i:04d}" for i in range(1000)]


def read_latencies(path):
    try:
        with open(path) as f:
            return json.load(f)["latencies"]
    except (OSError, ValueError, KeyError) as error:
        raise BenchError(f"client wrote no latencies ({error})")


def wait_client(proc, cleanup, timeout):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"client did not finish within {timeout:.0f} s")
    finally:
        Cleanup.stop(proc)
        cleanup.forget(proc)
    if proc.returncode != 0:
        raise BenchError(f"client exited with {proc.returncode}")


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Bench:
    def __init__(self, options, engine: Engine, postfix: PostfixRelay, sink_port, work, cleanup: Cleanup, logs_dir):
        self.o = options
        self.logs_dir = logs_dir  # excerpts of the daemon's log for runs that went wrong
        self.engine = engine
        self.postfix = postfix
        self.sink_port = sink_port
        self.work = work
        self.cleanup = cleanup
        self.templates = {}
        self.round_no = 0
        self.one_seconds = None  # this round's row-1 drain time
        # Anything slower than 100 msg/s misses every target anyway; do not wait longer for it.
        self.timeout = max(20.0 if options.quick else 60.0, options.messages / 100)
        # Longer than the first retry (retry_initial_s = 30 s), so a deferred message may come back.
        self.stall = 10.0 if options.quick else 45.0

    def prepare(self):
        self.templates["one"] = self.engine.template("one", ONE, 4)
        self.templates["hundred"] = self.engine.template("hundred", HUNDRED, 4)
        self.templates["thousand"] = self.engine.template("thousand", THOUSAND, 1)
        backlog = os.path.join(self.engine.work, "templates", "backlog.db")
        queue.copy(self.templates["one"], backlog)
        started = time.monotonic()
        queue.fill_scheduled(backlog, self.o.backlog, ONE[0])
        log(f"template backlog: {self.o.backlog:,} rows due in ten years, inserted in one transaction "
            f"in {time.monotonic() - started:.0f} s")
        self.templates["backlog"] = backlog

    def run_dir(self, name):
        return os.path.join(self.work, "runs", f"r{self.round_no}-{name}")

    def with_daemon(self, name, template, work, keys="none", extra=""):
        """A fresh daemon run on a copy of `template`; `work(daemon)` returns the result. The
        daemon is stopped whatever happens, and its peaks and exit code join the result.
        `extra` is appended to its config file."""
        daemon = DaemonRun(self.engine, self.run_dir(name), self.templates[template], keys, extra)
        try:
            result = work(daemon)
        finally:
            exit_code = daemon.stop() if daemon.proc else None
        result.update(exit_code=exit_code, peak_threads=daemon.peak_threads, peak_rss_mib=daemon.peak_rss_kib / 1024,
                      peak_anon_mib=daemon.peak_anon_kib / 1024)
        if not result.get("complete") or result.get("error_configs") or result.get("fallbacks") or exit_code:
            result["log"] = self.keep_log(daemon, name)
        for suffix in ("", "-wal", "-shm"):  # the (large) queue goes now, the log with the work dir
            if os.path.exists(daemon.db + suffix):
                os.remove(daemon.db + suffix)
        return result

    def keep_log(self, daemon, name):
        """An excerpt of the daemon's log: its first 40 lines above info, and its last 60."""
        with open(os.path.join(daemon.directory, "mailrouted.log"), errors="replace") as f:
            lines = f.readlines()
        loud = [line for line in lines if " info " not in line[:40]][:40]
        os.makedirs(self.logs_dir, exist_ok=True)
        path = os.path.join(self.logs_dir, f"r{self.round_no}-{name}.log")
        with open(path, "w") as f:
            f.write(f"# {len(lines)} lines; first {len(loud)} above info:\n")
            f.writelines(loud)
            f.write("# last 60 lines:\n")
            f.writelines(lines[-60:])
        return os.path.relpath(path, BENCH_DIR)

    def client(self, *args):
        return self.cleanup.spawn([sys.executable, "-m", "mailbench.clients", *args], cwd=BENCH_DIR)

    # -- the measurements ----------------------------------------------------------------

    def drain(self, template, tenants, keys="none"):
        """Rows 1 and 6: N queued rows, then the daemon starts; timed until the last is sent."""

        def work(daemon):
            first, last = queue.fill(daemon.db, self.o.messages, tenants)
            return daemon.drain(first, last, self.timeout, self.stall)

        return self.with_daemon(f"{template}-{keys}", template, work, keys)

    def backlog(self):
        """Row 3: the same drain behind a million rows due in ten years, then one password reset."""

        def work(daemon):
            first, _ = queue.fill(daemon.db, self.o.messages, ONE)
            _, reset = queue.fill(daemon.db, 1, ONE, category="password_reset", text="Your reset link.\n")
            result = daemon.drain(first, reset, self.timeout, self.stall)
            poller = queue.Poller(daemon.db)
            sent_at = poller.scalar("SELECT sent_at FROM messages WHERE id = ?", reset)
            poller.close()
            result["reset_s"] = sent_at - result["started"] if sent_at else None
            return result

        return self.with_daemon("backlog", "backlog", work)

    def wire(self):
        return wire(self.sink_port, self.o.messages)

    def postfix_relay(self):
        return self.postfix.drain(self.o.messages, self.timeout)

    def idle(self):
        """Row 5: pickup of rows inserted one at a time while idle, then the idle daemon's CPU."""

        def work(daemon):
            out = os.path.join(daemon.directory, "pickup.json")
            daemon.start()
            time.sleep(2.0)
            if not daemon.alive():
                raise BenchError(f"daemon exited with {daemon.proc.returncode}")
            client = self.client("pickup", daemon.db, ONE[0], str(self.o.pickups), out)
            wait_client(client, self.cleanup, self.o.pickups * 11 + 30)
            latencies = read_latencies(out)
            sent = [x for x in latencies if x is not None]
            daemon.sample()
            time.sleep(2.0)
            cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
            while time.monotonic() - t0 < self.o.idle_seconds:
                time.sleep(0.5)
                daemon.sample()
            idle_pct = (daemon.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
            errors, fallbacks = daemon.health()
            return {
                "complete": len(sent) == len(latencies), "rows": len(latencies), "sent": len(sent),
                "p50_ms": percentile(sent, 0.50) * 1000 if sent else None,
                "p99_ms": percentile(sent, 0.99) * 1000 if len(sent) == len(latencies) else None,
                "idle_cpu_pct": idle_pct, "error_configs": errors, "fallbacks": fallbacks,
            }

        return self.with_daemon("idle", "one", work)

    def enqueuer(self):
        """Row 5: a drain at full speed while another process INSERTs one row per transaction.

        An enqueuer faster than the daemon keeps the queue growing; the measurement is its
        COMMIT latency, so it lasts as long as the drain, but at most twice this round's row-1
        drain (at least 10 s): long enough to overlap a full-speed drain, bounded in rows."""
        limit = self.timeout if self.one_seconds is None else min(self.timeout, max(10.0, 2 * self.one_seconds))

        def work(daemon):
            first, last = queue.fill(daemon.db, self.o.messages, ONE)
            stop_file = os.path.join(daemon.directory, "stop")
            out = os.path.join(daemon.directory, "enqueuer.json")
            clients = []

            def start_enqueuer(_elapsed):
                if not clients:
                    clients.append(self.client("enqueue", daemon.db, ONE[0], stop_file, str(limit + 30), out))

            try:
                result = daemon.drain(first, last, limit, self.stall, during=start_enqueuer)
            finally:
                open(stop_file, "w").close()
                for client in clients:
                    wait_client(client, self.cleanup, 60)
            latencies = read_latencies(out)
            result["inserts"] = len(latencies)
            result["insert_p50_ms"] = percentile(latencies, 0.50) * 1000 if latencies else None
            result["insert_p99_ms"] = percentile(latencies, 0.99) * 1000 if latencies else None
            result["insert_max_ms"] = max(latencies) * 1000 if latencies else None
            return result

        return self.with_daemon("enqueuer", "one", work)

    def openssl(self):
        return {"rsa_ms": openssl_sign_seconds("rsa2048") * 1000, "ed25519_ms": openssl_sign_seconds("ed25519") * 1000,
                "complete": True}

    # -- a round ---------------------------------------------------------------------------

    def measurements(self):
        """(key, label, function) in the order each round runs them."""
        return [
            ("wire", "wire (smtp-source)", self.wire),
            ("postfix", "Postfix relay", self.postfix_relay),
            ("one", "drain, 1 configuration", lambda: self.drain("one", ONE)),
            ("hundred", "drain, 100 configurations", lambda: self.drain("hundred", HUNDRED)),
            ("thousand", "drain, 1,000 configurations", lambda: self.drain("thousand", THOUSAND)),
            ("backlog", "drain behind scheduled rows", self.backlog),
            ("rsa", "drain, RSA-signed", lambda: self.drain("one", ONE, "rsa")),
            ("both", "drain, RSA+Ed25519-signed", lambda: self.drain("one", ONE, "rsa+ed25519")),
            ("enqueuer", "drain with a concurrent enqueuer", self.enqueuer),
            ("idle", "idle pickup and idle CPU", self.idle),
            ("openssl", "openssl speed", self.openssl),
        ]

    def round(self, results):
        self.round_no += 1
        for key, label, measure in self.measurements():
            started = time.monotonic()
            try:
                result = measure()
            except BenchError as error:
                result = {"complete": False, "note": str(error)}
            except Exception as error:  # a bug of the bench or an engine surprise: recorded, not fatal
                traceback.print_exc()
                result = {"complete": False, "note": f"{type(error).__name__}: {error}"}
            result["wall_s"] = time.monotonic() - started
            results.setdefault(key, []).append(result)
            if key == "one":
                self.one_seconds = result.get("seconds")
            log(f"round {self.round_no}, {label}: {summary(result)}")
        shutil.rmtree(os.path.join(self.work, "runs"), ignore_errors=True)


def summary(result):
    parts = []
    if result.get("rate"):
        parts.append(f"{result['rate']:.0f} msg/s")
    for key, fmt in (("cpu_ms_per_msg", "{:.3f} ms CPU/msg"), ("peak_rss_mib", "{:.0f} MiB"),
                     ("peak_threads", "{} threads"), ("reset_s", "reset {:.2f} s"), ("p99_ms", "p99 {:.1f} ms"),
                     ("insert_p99_ms", "INSERT p99 {:.1f} ms"), ("idle_cpu_pct", "idle {:.2f} %"),
                     ("rsa_ms", "rsa {:.3f} ms"), ("ed25519_ms", "ed25519 {:.4f} ms")):
        if result.get(key) is not None:
            parts.append(fmt.format(result[key]))
    if result.get("error_configs") or result.get("fallbacks"):
        parts.append(f"{result['error_configs']} configs in error, {result['fallbacks']} fallbacks")
    if not result.get("complete"):
        parts.append(f"INCOMPLETE: {result.get('note') or result.get('sent')}")
    return ", ".join(parts) or "done"
