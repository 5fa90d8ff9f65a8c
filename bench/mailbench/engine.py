"""Mailroute itself: config files, SMTP configurations added with `mailroutectl`, and
`mailrouted` runs measured from the outside (/proc and the queue database)."""

import concurrent.futures
import os
import subprocess
import time

from . import queue
from .procs import BenchError, Cleanup, log, proc_cpu_seconds, proc_status, run

SENDER_DOMAIN = "tenant.test"
SENDER = f"bench@{SENDER_DOMAIN}"

CONFIG = """\
[queue]
path = "{queue}"

[delivery]
default_max_connections = 4
{allowed_networks}
[platform]
host = "127.0.0.1"
port = {port}
from_address = "platform@mailroute.test"

[secrets]
key_file = "{key}"

[dkim]
keys_dir = "{keys_dir}"

[log]
target = "stderr"
"""

ALLOWED_NETWORKS = 'allowed_networks = ["127.0.0.0/8"]\n'


class Engine:
    def __init__(self, bindir, work, sink_port, cleanup: Cleanup):
        self.mailrouted = os.path.join(bindir, "mailrouted")
        self.mailroutectl = os.path.join(bindir, "mailroutectl")
        self.work = os.path.join(work, "engine")
        self.sink_port = sink_port
        self.cleanup = cleanup
        self.key = os.path.join(self.work, "secrets.key")
        self.keys_dirs = {}
        self.knows_allowed_networks = False
        os.makedirs(self.work)

    # -- files ---------------------------------------------------------------------------

    def write_config(self, directory, keys_dir, allowed_networks=None, extra=""):
        """The daemon's config file; `extra` is appended (more sections, e.g. bench/api's [api])."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "mailroute.toml")
        allowed = self.knows_allowed_networks if allowed_networks is None else allowed_networks
        with open(path, "w") as f:
            f.write(CONFIG.format(queue=os.path.join(directory, "queue.db"), port=self.sink_port, key=self.key,
                                  keys_dir=keys_dir, allowed_networks=ALLOWED_NETWORKS if allowed else ""))
            f.write(extra)
        return path

    def ctl(self, config, *args):
        return run([self.mailroutectl, *args], env=dict(os.environ, MAILROUTE_CONFIG=config), timeout=120)

    def prepare(self):
        """The password key, the DKIM key sets, and whether this binary knows allowed_networks."""
        none = os.path.join(self.work, "dkim-none")
        os.makedirs(none)
        self.keys_dirs["none"] = none
        setup = self.write_config(os.path.join(self.work, "setup"), none, allowed_networks=False)
        self.ctl(setup, "key", "generate")
        for name, keys in (("rsa", [("b1", "rsa")]), ("rsa+ed25519", [("b1", "rsa"), ("b2", "ed25519")])):
            directory = os.path.join(self.work, "dkim-" + name.replace("+", "-"))
            for selector, algorithm in keys:
                self.ctl(setup, "dkim", "generate", "--keys-dir", directory, "--domain", SENDER_DOMAIN,
                         "--selector", selector, "--algorithm", algorithm)
            self.keys_dirs[name] = directory
        self.knows_allowed_networks = self._dry_start_with_allowed_networks()
        log("[delivery] allowed_networks: " + ("known, set to 127.0.0.0/8" if self.knows_allowed_networks
                                              else "unknown to this binary, left out"))

    def _dry_start_with_allowed_networks(self):
        """Starts the daemon on an empty queue with the key set: an unknown key stops it at once."""
        directory = os.path.join(self.work, "dry-start")
        config = self.write_config(directory, self.keys_dirs["none"], allowed_networks=True)
        errors = os.path.join(directory, "stderr.log")
        with open(errors, "w") as err:
            proc = self.cleanup.spawn([self.mailrouted, "--config", config], stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        running = proc.poll() is None
        self.cleanup.stop(proc)
        self.cleanup.forget(proc)
        if running:
            return True
        with open(errors) as f:
            text = f.read()
        if "unknown key delivery.allowed_networks" in text:
            return False
        raise BenchError(f"dry start of mailrouted failed: {text.strip()[-600:]}")

    def template(self, name, tenants, max_connections):
        """A queue database with one configuration per tenant, all to the sink; made once per run."""
        directory = os.path.join(self.work, "templates", name)
        config = self.write_config(directory, self.keys_dirs["none"])
        started = time.monotonic()

        def add(tenant):
            self.ctl(config, "config", "add", "--tenant", tenant, "--name", "sink", "--host", "127.0.0.1",
                     "--port", str(self.sink_port), "--security", "none", "--from-address", SENDER,
                     "--max-connections", str(max_connections))

        self.ctl(config, "migrate")
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(add, tenants))
        path = os.path.join(directory, "queue.db")
        poller = queue.Poller(path)
        count = poller.scalar("SELECT count(*) FROM smtp_configs")
        poller.close()
        if count != len(tenants):
            raise BenchError(f"template {name}: {count} configurations instead of {len(tenants)}")
        log(f"template {name}: {count} configurations x {max_connections} connections "
            f"added with mailroutectl in {time.monotonic() - started:.0f} s")
        return path


class DaemonRun:
    """One `mailrouted` on a fresh copy of a template queue, watched through /proc and the queue."""

    def __init__(self, engine: Engine, directory, template, keys="none", extra=""):
        self.engine = engine
        self.directory = directory
        os.makedirs(directory)
        self.config = engine.write_config(directory, engine.keys_dirs[keys], extra=extra)
        self.db = os.path.join(directory, "queue.db")
        queue.copy(template, self.db)
        self.proc = None
        self.started = None
        self.peak_threads = 0
        self.peak_rss_kib = 0
        self.peak_anon_kib = 0  # the part of RSS that is not file pages (e.g. an mmap of the queue)

    def start(self):
        with open(os.path.join(self.directory, "mailrouted.log"), "w") as err:
            self.started = time.time()
            self.proc = self.engine.cleanup.spawn([self.engine.mailrouted, "--config", self.config],
                                                  stdout=subprocess.DEVNULL, stderr=err)
        return self.started

    def alive(self):
        return self.proc.poll() is None

    def log_value(self, marker, key):
        """`key=VALUE` from the first line of the daemon's log that holds `marker`, or None yet
        (e.g. ("api listening", "address") for the port an `[api] listen = "127.0.0.1:0"` got)."""
        try:
            with open(os.path.join(self.directory, "mailrouted.log"), errors="replace") as f:
                for line in f:
                    if marker in line:
                        for word in line.split():
                            if word.startswith(key + "="):
                                return word[len(key) + 1:].strip('"')
        except OSError:
            pass
        return None

    def sample(self):
        status = proc_status(self.proc.pid)
        if status:
            self.peak_threads = max(self.peak_threads, status.get("Threads", 0))
            self.peak_rss_kib = max(self.peak_rss_kib, status.get("VmHWM", 0))
            self.peak_anon_kib = max(self.peak_anon_kib, status.get("RssAnon", 0))

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def health(self):
        """(configurations in status error, messages that left by route fallback)."""
        poller = queue.Poller(self.db)
        try:
            return (poller.scalar("SELECT count(*) FROM smtp_configs WHERE status = 'error'"),
                    poller.scalar("SELECT count(*) FROM messages WHERE route = 'fallback'"))
        finally:
            poller.close()

    def stop(self):
        self.sample()
        rc = Cleanup.stop(self.proc)
        self.engine.cleanup.forget(self.proc)
        return rc

    def drain(self, first, last, timeout, stall=30.0, poll=0.025, during=None):
        """Starts the daemon and waits until rows first..last are `sent` (bounded by `timeout`,
        or `stall` seconds without progress). `during(elapsed)` is called on every poll."""
        expected = last - first + 1
        poller = queue.Poller(self.db)
        t0 = self.start()
        sent, progress_at, note, seconds, cpu = 0, time.monotonic(), "", None, None
        next_check = time.monotonic() + 1.0
        try:
            while True:
                if not self.alive():
                    note = f"daemon exited with {self.proc.returncode}"
                    break
                sent_now = poller.sent(first, last)
                now = time.time()
                self.sample()
                if sent_now >= expected:
                    seconds, cpu, sent = now - t0, self.cpu_seconds(), sent_now
                    break
                if sent_now > sent:
                    sent, progress_at = sent_now, time.monotonic()
                if time.monotonic() > next_check:
                    next_check = time.monotonic() + 1.0
                    given_up = poller.given_up(first, last)
                    if given_up and sent + given_up >= expected:
                        note = f"{given_up} rows failed or expired"
                        break
                if now - t0 > timeout:
                    note = f"timeout after {timeout:.0f} s"
                    break
                if time.monotonic() - progress_at > stall:
                    note = f"no progress for {stall:.0f} s"
                    break
                if during:
                    during(now - t0)
                time.sleep(poll)
            elapsed = time.time() - t0
            if seconds is None:
                cpu = self.cpu_seconds() if self.alive() else None
            errors, fallbacks = self.health()
        finally:
            poller.close()
        return DrainResult(expected=expected, sent=sent, seconds=seconds, elapsed=elapsed, cpu_seconds=cpu, note=note,
                           peak_threads=self.peak_threads, peak_rss_mib=self.peak_rss_kib / 1024,
                           peak_anon_mib=self.peak_anon_kib / 1024,
                           error_configs=errors, fallbacks=fallbacks, started=t0)


class DrainResult(dict):
    """What one drain measured: a dict (for the JSON file) with a few derived numbers. A drain
    given up after `elapsed` seconds would have taken longer: its rate is below `rate_below`."""

    def __init__(self, **values):
        super().__init__(**values)
        done = values["seconds"] is not None
        cpu, sent = values["cpu_seconds"], values["sent"]
        self["complete"] = done
        self["rate"] = values["expected"] / values["seconds"] if done else None
        self["rate_below"] = None if done else values["expected"] / values["elapsed"]
        self["cpu_ms_per_msg"] = cpu / values["expected"] * 1000 if (done and cpu is not None) else None
        self["cpu_ms_per_sent"] = cpu / sent * 1000 if (cpu is not None and sent) else None
