"""Everything that is not Mailroute: the sink, the wire (smtp-source), a private Postfix relay,
and OpenSSL's signing speed."""

import os
import re
import resource
import shutil
import subprocess
import time

from .procs import (BenchError, Cleanup, free_port, log, port_accepts, proc_cpu_seconds, run,
                    wait_until)

SENDER = "bench@tenant.test"
RECIPIENT = "r@example.com"


SINK_SESSIONS = 4096


def _more_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SINK_SESSIONS + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))


def start_sink(cleanup: Cleanup, work):
    """Postfix's smtp-sink on a free loopback port; it accepts everything and keeps nothing.

    `-m`: smtp-sink serves only 256 sessions at once by default and leaves the rest unanswered in
    the listen queue. A daemon that keeps 400 or 1,000 pooled connections open would then see
    connect timeouts that are the sink's, not its own."""
    port = free_port()
    out = open(os.path.join(work, "smtp-sink.out"), "w")
    proc = cleanup.spawn(["/usr/sbin/smtp-sink", "-u", "nobody", "-m", str(SINK_SESSIONS), "-c",
                          f"127.0.0.1:{port}", "1024"], stdout=out, stderr=subprocess.STDOUT,
                         preexec_fn=_more_descriptors)
    out.close()
    wait_until(lambda: port_accepts(port) or proc.poll() is not None, 10, what="smtp-sink to listen")
    if proc.poll() is not None:
        raise BenchError(f"smtp-sink exited with {proc.returncode}")
    return port


def smtp_source(port, messages, sessions=4, timeout=600):
    """smtp-source: `sessions` connections, each reused (-d) for its share of ~5 KB messages."""
    args = ["/usr/sbin/smtp-source", "-d", "-s", str(sessions), "-m", str(messages), "-l", "5000",
            "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    started = time.monotonic()
    run(args, timeout=timeout)
    return time.monotonic() - started


def wire(port, messages):
    seconds = smtp_source(port, messages)
    return {"seconds": seconds, "rate": messages / seconds, "complete": True}


MAIN_CF = """\
# A private Postfix relay for the bench: defaults except where it must differ.
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
# The bench injects with everything held, then releases the hold queue and times the drain.
smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject_unauth_destination
"""

# Debian's master.cf services without chroot (the instance's queue directory has no /etc copy),
# and smtpd on the bench's port.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixRelay:
    """A Postfix 3.7 instance of our own (postfix -c DIR), relaying everything to the sink."""

    def __init__(self, cleanup: Cleanup, work, sink_port):
        self.dir = os.path.join(work, "postfix")
        self.conf = os.path.join(self.dir, "conf")
        self.queue = os.path.join(self.dir, "queue")
        self.port = free_port()
        self.sink_port = sink_port
        self.cleanup = cleanup
        self.running = False
        self.failure = None  # why the instance could not start, reported in place of a number

    def postfix(self, *args, timeout=120):
        try:
            return run(["/usr/sbin/postfix", "-c", self.conf, *args], timeout=timeout)
        except BenchError as error:  # without a terminal postfix tells only its log
            raise BenchError(f"{error} {self.log_tail()}")

    def log_tail(self, lines=5):
        try:
            with open(os.path.join(self.dir, "maillog")) as f:
                return "| maillog: " + " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    def start(self):
        for sub in ("conf", "data", "queue"):
            os.makedirs(os.path.join(self.dir, sub))
        os.chmod(os.path.dirname(self.dir), 0o755)  # postfix's own processes walk down to their queue
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(d=self.dir, sink=self.sink_port))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        shutil.chown(os.path.join(self.dir, "data"), "postfix", "postfix")
        self.cleanup.defer("private postfix instance", self.stop)
        self.postfix("check")
        self.postfix("start")
        self.running = True
        wait_until(lambda: port_accepts(self.port), 20, what="postfix smtpd to listen")
        log(f"postfix instance in {self.dir}, smtpd on 127.0.0.1:{self.port}")

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queued(self, queues=QUEUES):
        return sum(len(files) for q in queues for _, _, files in os.walk(os.path.join(self.queue, q)))

    def cpu_seconds(self):
        """CPU of the master, of its live children and of the children it already reaped."""
        master = self.master_pid()
        if master is None:
            return None
        total = 0.0
        with open(f"/proc/{master}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == master or int(entry) == master:
                total += proc_cpu_seconds(int(entry)) or 0.0
        return total

    def delivered(self):
        """Deliveries to the sink so far, from the instance's log."""
        try:
            with open(os.path.join(self.dir, "maillog"), errors="replace") as f:
                return sum(1 for line in f if "status=sent" in line)
        except OSError:
            return 0

    def drain(self, messages, timeout, stall=30.0):
        """Injects `messages` (held), releases them and times until the queue is empty."""
        if self.failure:
            raise BenchError(self.failure)
        if self.queued():
            raise BenchError(f"{self.queued()} messages left in the postfix queue from before")
        before = self.delivered()
        smtp_source(self.port, messages)
        wait_until(lambda: self.queued(("hold",)) >= messages and self.queued(("maildrop", "incoming")) == 0,
                   120, interval=0.1, what=f"{messages} messages on hold in postfix")
        cpu0 = self.cpu_seconds()
        started = time.monotonic()
        run(["/usr/sbin/postsuper", "-c", self.conf, "-H", "ALL"])
        run(["/usr/sbin/postqueue", "-c", self.conf, "-f"])
        left, progress_at, note = messages, time.monotonic(), ""
        while True:
            now_left = self.queued()
            now = time.monotonic()
            if now_left == 0:
                break
            if now_left < left:
                left, progress_at = now_left, now
            if now - started > timeout:
                note = f"timeout after {timeout:.0f} s ({now_left} left)"
                break
            if now - progress_at > stall:
                note = f"no progress for {stall:.0f} s ({now_left} left)"
                break
            time.sleep(0.025)
        seconds = time.monotonic() - started
        cpu1 = self.cpu_seconds()
        if not note:  # an empty queue must mean delivered, not bounced: the log says which
            try:
                wait_until(lambda: self.delivered() - before >= messages, 10, what="postfix's log")
            except BenchError:
                note = f"queue empty but only {self.delivered() - before} of {messages} delivered {self.log_tail(3)}"
        done = not note
        cpu = (cpu1 - cpu0) / messages * 1000 if (done and cpu0 is not None and cpu1 is not None) else None
        return {"seconds": seconds if done else None, "rate": messages / seconds if done else None,
                "rate_below": None if done else messages / seconds, "complete": done, "note": note,
                "cpu_ms_per_msg": cpu}

    def stop(self):
        master = self.master_pid() if self.running else None
        if self.running:
            self.running = False
            try:
                self.postfix("stop", timeout=30)
            except BenchError as error:
                log(f"postfix stop: {error}")
        if master:
            try:
                wait_until(lambda: not os.path.exists(f"/proc/{master}"), 20, what="postfix master to exit")
            except BenchError:
                os.kill(master, 9)
        shutil.rmtree(self.dir, ignore_errors=True)


def openssl_sign_seconds(algorithm, seconds=2):
    """Seconds per signature from `openssl speed` (rsa2048 or ed25519), on one core."""
    out = run(["openssl", "speed", "-seconds", str(seconds), algorithm], timeout=120)
    pattern = {"rsa2048": r"^rsa 2048 bits", "ed25519": r"EdDSA \(Ed25519\)"}[algorithm]
    for line in out.splitlines():
        if re.search(pattern, line.strip()):
            sign_per_s = float(line.split()[-2])
            return 1.0 / sign_per_s
    raise BenchError(f"cannot read openssl speed {algorithm} output:\n{out[-400:]}")
