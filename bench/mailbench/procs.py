"""Processes and waits: everything the bench starts is stopped by `Cleanup`, and every wait
is bounded in time."""

import os
import signal
import socket
import subprocess
import sys
import time


class BenchError(Exception):
    """A step of the bench that could not be done; the message says which and why."""


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls `predicate` until it returns something truthy; raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(args, timeout=600, **kw):
    """Runs a command to completion (bounded); raises BenchError with its stderr on failure."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{args[0]} did not finish within {timeout} s")
    if done.returncode != 0:
        raise BenchError(f"{' '.join(map(str, args))} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


class Cleanup:
    """Remembers what was started and undoes it in reverse order, even on Ctrl-C or SIGTERM.

    Processes are stopped by their own pid (SIGTERM, then SIGKILL after a grace period);
    other undo steps (stopping Postfix, removing the temp dir) are registered callbacks."""

    def __init__(self):
        self._steps = []  # ("proc", Popen) or ("call", description, fn)

    def spawn(self, args, **kw):
        kw.setdefault("start_new_session", True)  # a terminal's Ctrl-C reaches only us; we stop them
        proc = subprocess.Popen(args, **kw)
        self._steps.append(("proc", proc))
        return proc

    def defer(self, description, fn):
        self._steps.append(("call", description, fn))

    @staticmethod
    def stop(proc, grace=15.0):
        """SIGTERM, wait up to `grace` s, then SIGKILL. Returns the exit code."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                return proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(timeout=10)

    def forget(self, proc):
        self._steps = [s for s in self._steps if not (s[0] == "proc" and s[1] is proc)]

    def run_all(self):
        while self._steps:
            step = self._steps.pop()
            try:
                if step[0] == "proc":
                    self.stop(step[1], grace=5.0)
                else:
                    step[2]()
            except Exception as error:  # cleanup must go on with the next step
                log(f"cleanup: {step[1] if step[0] == 'call' else step[1].args[0]}: {error}")


def install_signal_handlers():
    """SIGINT, SIGTERM and SIGHUP end the run with KeyboardInterrupt, so `finally` blocks run
    the cleanup. SIGINT is set explicitly: a shell starts background jobs with it ignored."""

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def proc_status(pid):
    """Threads, VmHWM, VmRSS and RssAnon (KiB) from /proc/PID/status, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Threads", "VmHWM", "VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0])
    return values


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    """utime + stime of the process (all its threads) in seconds, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
