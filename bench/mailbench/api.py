"""bench/api's measurements (issue 13 item 8): the HTTP API of SPEC §9 against its peer in the
same run — POST /v1/messages against direct INSERTs into the same daemon's queue, drains with
the API off, on but idle, and on under a steady stream of GET /v1/messages/{id}."""

import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import time

from . import queue
from .procs import BenchError, log, wait_until
from .report import MISS, PASS, med, num, vals
from .scenarios import ONE, Bench, percentile, read_latencies, wait_client

# Rows enqueued for the enqueue-rate phases are due ten years from now: the daemon leaves them
# alone (SPEC §3: a row is admitted when it becomes due), so the phases measure the enqueue path
# alone, the same for both sides. The daemon still sees every commit (inotify, data_version).
TEN_YEARS = queue.TEN_YEARS

API_SECTION = """
[api]
listen = "127.0.0.1:0"
token_file = "{token_file}"
"""

WRK_LUA = """\
-- POST /v1/messages, one ~5 KB message per request, as bench/api's direct INSERTs.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.body = [==[{body}]==]
"""


def api_section(token_file):
    return API_SECTION.format(token_file=token_file)


def make_token(directory):
    """A token file as the daemon wants it: one token of 43 characters, mode 0600."""
    path = os.path.join(directory, "api-token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


def read_token(path):
    with open(path) as f:
        return f.readline().strip()


def message_json(send_at):
    """The API's body for the row the direct enqueuer INSERTs (same columns, same ~5 KB text)."""
    return json.dumps({"tenant": ONE[0], "category": "report", "send_at": send_at, "rcpt_to": ["r@example.com"],
                       "subject": "enqueued through the API", "text_body": queue.BODY})


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_wrk(text):
    """Requests, seconds, non-2xx count, socket errors and latency percentiles from `wrk --latency`."""
    out = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", text)
    if m:
        value = float(m.group(2))
        out["requests"] = int(m.group(1))
        out["seconds"] = value / 1000 if m.group(3) == "ms" else value * 60 if m.group(3) == "m" else value
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    for p, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        out[f"p{p}_ms"] = float(value) * scale
    return out


class APIBench(Bench):
    """Reuses bench/run's Bench (daemon runs on template copies, stopped whatever happens, logs
    kept for runs that went wrong); only the template with one configuration is made."""

    def __init__(self, options, engine, sink_port, work, cleanup, logs_dir):
        super().__init__(options, engine, None, sink_port, work, cleanup, logs_dir)
        self.token_file = make_token(work)
        self.token = read_token(self.token_file)
        self.api = api_section(self.token_file)
        self.wrk = shutil.which("wrk")

    def prepare(self):
        self.templates["one"] = self.engine.template("one", ONE, 4)

    def api_port(self, daemon, timeout=20.0):
        def port():
            if not daemon.alive():
                raise BenchError(f"daemon exited with {daemon.proc.returncode}")
            address = daemon.log_value("api listening", "address")
            return int(address.rpartition(":")[2]) if address else None

        return wait_until(port, timeout, interval=0.01, what="the daemon's `api listening` line")

    # -- (a), (b): enqueue rates -------------------------------------------------------------

    def direct(self, daemon, synchronous, seconds, tag):
        """One process, one connection, BEGIN; INSERT; COMMIT per row, for `seconds`."""
        out = os.path.join(daemon.directory, f"direct-{tag}.json")
        stop = os.path.join(daemon.directory, f"stop-{tag}")
        cpu0 = daemon.cpu_seconds()
        client = self.client("enqueue", daemon.db, ONE[0], stop, f"{seconds:g}", out,
                             str(time.time() + TEN_YEARS), synchronous)
        wait_client(client, self.cleanup, seconds + 60)
        cpu1 = daemon.cpu_seconds()
        with open(out) as f:
            data = json.load(f)
        latencies = data["latencies"]
        return {"rows": len(latencies), "seconds": data["ended"] - data["began"], "daemon_cpu_s": cpu1 - cpu0,
                "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else None,
                "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None}

    def through_api(self, daemon, port, seconds, tag):
        """wrk: `--wrk-threads` threads, `--connections` keep-alive connections, for `seconds`."""
        if not self.wrk:
            raise BenchError("wrk is not installed (scripts/install-deps installs it)")
        script = os.path.join(daemon.directory, "post.lua")
        if not os.path.exists(script):
            with open(script, "w") as f:
                f.write(WRK_LUA.format(token=self.token, body=message_json(time.time() + TEN_YEARS)))
        poller = queue.Poller(daemon.db)
        before = poller.scalar("SELECT max(id) FROM messages") or 0
        cpu0, wrk0 = daemon.cpu_seconds(), children_cpu()
        args = [self.wrk, "-t", str(self.o.wrk_threads), "-c", str(self.o.connections), "-d", f"{seconds:g}s",
                "--timeout", "5s", "--latency", "-s", script, f"http://127.0.0.1:{port}/v1/messages"]
        proc = self.cleanup.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            text, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            raise BenchError("wrk did not finish")
        finally:
            self.cleanup.stop(proc)
            self.cleanup.forget(proc)
        cpu1, wrk1 = daemon.cpu_seconds(), children_cpu()
        rows = (poller.scalar("SELECT max(id) FROM messages") or 0) - before
        poller.close()
        with open(os.path.join(daemon.directory, f"wrk-{tag}.out"), "w") as f:
            f.write(text)
        w = parse_wrk(text)
        if proc.returncode != 0 or "seconds" not in w:
            raise BenchError(f"wrk exited with {proc.returncode}: {text.strip()[-400:]}")
        return {"rows": rows, "seconds": w["seconds"], "daemon_cpu_s": cpu1 - cpu0, "client_cpu_s": wrk1 - wrk0,
                "requests": w["requests"], "non_2xx": w["non_2xx"], "socket_errors": w["socket_errors"],
                "p50_ms": w.get("p50_ms"), "p99_ms": w.get("p99_ms")}

    @staticmethod
    def combine(slices):
        """One side's slices of a round as one result: rows and seconds summed, latencies the
        median of the slices' percentiles."""
        rows, seconds = sum(x["rows"] for x in slices), sum(x["seconds"] for x in slices)
        out = {"complete": rows > 0 and not any(x.get("non_2xx") or x.get("socket_errors") for x in slices),
               "rows": rows, "seconds": seconds, "rate": rows / seconds if seconds > 0 else None,
               "slice_rates": [x["rows"] / x["seconds"] for x in slices if x["seconds"] > 0],
               "daemon_cpu_ms_per_msg": sum(x["daemon_cpu_s"] for x in slices) / rows * 1000 if rows else None}
        for key in ("p50_ms", "p99_ms"):
            v = [x[key] for x in slices if x.get(key) is not None]
            out[key] = statistics.median(v) if v else None
        if "client_cpu_s" in slices[0]:
            out["client_cpu_ms_per_msg"] = sum(x["client_cpu_s"] for x in slices) / rows * 1000 if rows else None
            bad = sum(x["non_2xx"] for x in slices)
            errors = sum(x["socket_errors"] for x in slices)
            if bad or errors:
                out["note"] = f"{bad} answers not 2xx, {errors} socket errors"
        return out

    def gets_idle(self, daemon, port, seconds):
        """The GET client against the same daemon with nothing to drain: (e)'s peer."""
        poller = queue.Poller(daemon.db)
        first, last = poller.scalar("SELECT min(id) FROM messages"), poller.scalar("SELECT max(id) FROM messages")
        poller.close()
        out = os.path.join(daemon.directory, "get-idle.json")
        stop = os.path.join(daemon.directory, "stop-get-idle")
        client = self.client("get", str(port), self.token_file, str(first), str(last), str(self.o.get_rate),
                             str(self.o.get_connections), stop, f"{seconds:g}", out)
        wait_client(client, self.cleanup, seconds + 60)
        return get_stats({"complete": True}, out)

    def enqueue_rates(self, results):
        """(a) and (b) against one daemon with the API on: each side's `--phase` seconds cut into
        `--slices` slices that alternate (a, a FULL, b, then b, a FULL, a, ...), so both share the
        machine's moments; then (f), GETs with the daemon idle."""
        found = {}

        def work(daemon):
            daemon.start()
            port = self.api_port(daemon)
            time.sleep(1.0)  # past the daemon's startup work
            seconds = max(1, round(self.o.phase / self.o.slices))  # wrk -d takes whole seconds
            phases = [("direct", lambda tag: self.direct(daemon, "NORMAL", seconds, tag)),
                      ("direct_full", lambda tag: self.direct(daemon, "FULL", seconds, tag)),
                      ("api", lambda tag: self.through_api(daemon, port, seconds, tag))]
            slices = {key: [] for key, _ in phases}
            for n in range(self.o.slices):
                for key, measure in (phases if (n + self.round_no) % 2 else phases[::-1]):
                    slices[key].append(measure(f"{key}-{n}"))
                    daemon.sample()
            for key, parts in slices.items():
                found[key] = self.combine(parts)
                log(f"round {self.round_no}, enqueue {key}: {found[key]['rows']:,} rows, "
                    f"{found[key]['rate']:.0f} msg/s, p99 {found[key]['p99_ms'] or 0:.1f} ms, "
                    f"daemon {found[key]['daemon_cpu_ms_per_msg'] or 0:.3f} ms CPU/msg")
            found["get_idle"] = self.gets_idle(daemon, port, self.o.phase / 2)
            g = found["get_idle"]
            log(f"round {self.round_no}, GETs with the daemon idle: p50 {g.get('get_p50_ms') or 0:.1f} ms, "
                f"p99 {g.get('get_p99_ms') or 0:.1f} ms ({g['gets']} requests, {g['get_errors']} errors)")
            return {"complete": True}

        outer = self.with_daemon("enqueue", "one", work, extra=self.api)
        for key, value in found.items():
            value.update(peak_rss_mib=outer["peak_rss_mib"], peak_threads=outer["peak_threads"])
            results.setdefault(key, []).append(value)
        if not found:
            results.setdefault("api", []).append(outer)

    # -- (c), (d), (e): drains -----------------------------------------------------------------

    def api_drain(self, mode):
        """A bench/run row-1 drain (N rows queued before the start, 1 configuration x 4) with
        [api] off, on and idle, or on with GETs of random ids of the drained rows."""
        extra = "" if mode == "off" else self.api

        def work(daemon):
            first, last = queue.fill(daemon.db, self.o.messages, ONE)
            if mode != "get":
                return daemon.drain(first, last, self.timeout, self.stall)
            stop = os.path.join(daemon.directory, "stop-get")
            out = os.path.join(daemon.directory, "get.json")
            clients = []

            def start_client(_elapsed):
                if not clients:
                    address = daemon.log_value("api listening", "address")
                    if address:
                        port = address.rpartition(":")[2]
                        clients.append((time.time(), self.client(
                            "get", port, self.token_file, str(first), str(last), str(self.o.get_rate),
                            str(self.o.get_connections), stop, str(self.timeout + 30), out)))

            try:
                result = daemon.drain(first, last, self.timeout, self.stall, during=start_client)
            finally:
                open(stop, "w").close()
                for _, client in clients:
                    wait_client(client, self.cleanup, 60)
            if not clients:
                raise BenchError("the API did not say where it listens before the drain ended")
            result["get_started_after_s"] = clients[0][0] - result["started"]
            return get_stats(result, out)

        return self.with_daemon(f"drain-{mode}", "one", work, extra=extra)

    # -- a round -------------------------------------------------------------------------------

    def round(self, results):
        self.round_no += 1
        started = time.monotonic()
        try:
            self.enqueue_rates(results)
        except BenchError as error:
            log(f"round {self.round_no}, enqueue: {error}")
            results.setdefault("api", []).append({"complete": False, "note": str(error)})
        modes = ["off", "idle", "get"]
        shift = (self.round_no - 1) % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            try:
                result = self.api_drain(mode)
            except BenchError as error:
                result = {"complete": False, "note": str(error)}
            results.setdefault(f"drain_{mode}", []).append(result)
            extra = (f", GET p50 {result['get_p50_ms']:.1f} ms p99 {result['get_p99_ms']:.1f} ms "
                     f"({result['gets']} requests, {result['get_errors']} errors)") if result.get("get_p99_ms") else ""
            rate = f"{result['rate']:.0f} msg/s" if result.get("rate") else f"INCOMPLETE: {result.get('note')}"
            log(f"round {self.round_no}, drain with the API {mode}: {rate}{extra}")
        shutil.rmtree(os.path.join(self.work, "runs"), ignore_errors=True)
        log(f"round {self.round_no} took {time.monotonic() - started:.0f} s")


def get_stats(result, out):
    """The GET client's file as numbers in `result`."""
    with open(out) as f:
        data = json.load(f)
    latencies, service = data["latencies"], data["service"]
    result.update(gets=data["requests"], get_errors=len(data["errors"]), get_error_kinds=sorted(set(data["errors"])),
                  get_latencies_ms=[x * 1000 for x in latencies])
    if latencies:
        result.update(get_p50_ms=percentile(latencies, 0.5) * 1000, get_p99_ms=percentile(latencies, 0.99) * 1000,
                      get_max_ms=max(latencies) * 1000, get_service_p99_ms=percentile(service, 0.99) * 1000)
    return result


# -- the report ----------------------------------------------------------------------------------


def per_round_ratio(a_runs, b_runs, field="rate"):
    v = [a[field] / b[field] for a, b in zip(a_runs or [], b_runs or []) if a.get(field) and b.get(field)]
    return (statistics.median(v), v) if v else (None, [])


def spread(runs, field, digits=0, unit=""):
    v = vals(runs, field)
    if not v:
        return "–"
    text = f"{num(statistics.median(v), digits)}{unit}"
    if len(v) > 1:
        text += f" ({num(min(v), digits)}–{num(max(v), digits)})"
    return text


def verdict(ok):
    return "not measured" if ok is None else (PASS if ok else MISS)


def markdown(results, meta):
    r = results
    api, direct, full = r.get("api"), r.get("direct"), r.get("direct_full")
    off, idle, get = r.get("drain_off"), r.get("drain_idle"), r.get("drain_get")
    get_idle = r.get("get_idle")
    api_vs_direct, _ = per_round_ratio(api, direct)
    full_vs_direct, _ = per_round_ratio(full, direct)
    idle_vs_off, idle_ratios = per_round_ratio(idle, off)
    get_vs_off, _ = per_round_ratio(get, off)
    get_vs_idle, _ = per_round_ratio(get, idle)
    api_rate = med(api, "rate")
    p99s = vals(get, "get_p99_ms")
    p99 = statistics.median(p99s) if p99s else None
    pooled = [x for g in get or [] for x in g.get("get_latencies_ms", [])]
    pooled_p99 = percentile(pooled, 0.99) if pooled else None

    def ratio_text(x, what):
        return "–" if x is None else f"{x:.2f}× {what}"

    incomplete = [f"{key}: {x.get('note') or 'incomplete'}" for key in ("api", "direct", "direct_full", "drain_off",
                                                                      "drain_idle", "drain_get", "get_idle")
                  for x in r.get(key, []) if not x.get("complete")]
    rows = [
        ("a", "direct INSERT, 1 process, BEGIN; INSERT; COMMIT per row, `synchronous = NORMAL` (as the daemon's own connection)",
         spread(direct, "rate", unit=" msg/s"), "peer of (b)",
         f"p50 {num(med(direct, 'p50_ms'), 2)} ms, p99 {num(med(direct, 'p99_ms'), 2)} ms per COMMIT",
         num(med(direct, "daemon_cpu_ms_per_msg"), 3), "", ""),
        ("a", "direct INSERT, the same with SQLite's default `synchronous = FULL` (README's enqueuer)",
         spread(full, "rate", unit=" msg/s"), ratio_text(full_vs_direct, "(a)"),
         f"p50 {num(med(full, 'p50_ms'), 2)} ms, p99 {num(med(full, 'p99_ms'), 2)} ms per COMMIT",
         num(med(full, "daemon_cpu_ms_per_msg"), 3), "", ""),
        ("b", f"`POST /v1/messages`, wrk -t{meta['wrk_threads']} -c{meta['connections']} (keep-alive), one message per request",
         spread(api, "rate", unit=" msg/s"), ratio_text(api_vs_direct, "(a)"),
         f"p50 {num(med(api, 'p50_ms'), 2)} ms, p99 {num(med(api, 'p99_ms'), 2)} ms per request (wrk); "
         f"wrk {num(med(api, 'client_cpu_ms_per_msg'), 3)} ms CPU/msg",
         num(med(api, "daemon_cpu_ms_per_msg"), 3), "≥ 2,000 msg/s",
         verdict(None if api_rate is None else api_rate >= 2000)),
        ("c", "drain, `[api]` off", spread(off, "rate", unit=" msg/s"), "peer of (d), (e)",
         "", num(med(off, "cpu_ms_per_msg"), 3), "", ""),
        ("d", "drain, `[api]` on, idle", spread(idle, "rate", unit=" msg/s"),
         ratio_text(idle_vs_off, "(c)") + (" (rounds: " + ", ".join(f"{x:.2f}" for x in idle_ratios) + ")"
                                          if len(idle_ratios) > 1 else ""),
         "", num(med(idle, "cpu_ms_per_msg"), 3), "≥ 0.97× (c)",
         verdict(None if idle_vs_off is None else idle_vs_off >= 0.97)),
        ("e", f"drain, `[api]` on, `GET /v1/messages/{{id}}` of random drained ids at {meta['get_rate']:g}/s "
              f"over {meta['get_connections']} keep-alive connections",
         spread(get, "rate", unit=" msg/s"), f"{ratio_text(get_vs_off, '(c)')}, {ratio_text(get_vs_idle, '(d)')}",
         f"{num(med(get, 'gets'))} GETs per drain, {num(sum(vals(get, 'get_errors')) if vals(get, 'get_errors') else None)} errors",
         num(med(get, "cpu_ms_per_msg"), 3), "", ""),
        ("e", "GET latency during that drain, from each request's slot in the schedule",
         f"p50 {spread(get, 'get_p50_ms', 1, ' ms')}, p99 {spread(get, 'get_p99_ms', 1, ' ms')}",
         f"all rounds pooled: p99 {num(pooled_p99, 1)} ms of {len(pooled):,}; max {num(max(vals(get, 'get_max_ms')) if vals(get, 'get_max_ms') else None, 1)} ms",
         f"service time (send to answer) p99 {spread(get, 'get_service_p99_ms', 1, ' ms')}", "",
         "p99 ≤ 20 ms (median of the rounds' p99s)", verdict(None if p99 is None else p99 <= 20.0)),
        ("f", f"the same GETs against the daemon of (a), (b), with nothing to drain, for {meta['phase'] / 2:g} s",
         f"p50 {spread(get_idle, 'get_p50_ms', 1, ' ms')}, p99 {spread(get_idle, 'get_p99_ms', 1, ' ms')}",
         "peer of (e)", f"service time p99 {spread(get_idle, 'get_service_p99_ms', 1, ' ms')}; "
         f"{num(sum(vals(get_idle, 'get_errors')) if vals(get_idle, 'get_errors') else None)} errors", "", "", ""),
    ]
    targets = [row[7] for row in rows if row[6]]
    passed, missed = targets.count(PASS), targets.count(MISS)
    threads = max(vals([x for k in ("api", "drain_off", "drain_idle", "drain_get") for x in r.get(k, [])], "peak_threads"),
                  default=None)
    rss = max(vals([x for k in ("api", "drain_off", "drain_idle", "drain_get") for x in r.get(k, [])], "peak_rss_mib"),
              default=None)
    lines = [
        f"# Mailroute HTTP API bench (issue 13 item 8), {meta['date']}",
        "",
        f"Commit {meta['commit']}"
        f"{' (Sources and Package.swift as of ' + meta['sources'] + ')' if meta.get('sources') else ''}; {meta['rounds']} round(s), median with min–max in brackets, ratios the median of "
        f"per-round ratios (both sides in the same round){'; QUICK smoke run, not a measurement' if meta['quick'] else ''}. "
        f"{meta['build'][0].upper() + meta['build'][1:]}. {meta['machine']}; {meta['wrk']}. Load average at start "
        f"{meta['load_start']}, at end {meta['load_end']}: a shared, noisy machine, so compare rows of this run, "
        f"not across runs. Run took {meta['wall_min']:.1f} min.",
        "",
        f"Enqueue: {meta['phase']:g} s per side per round in {meta['slices']} alternating slices, against one daemon "
        f"with the API on, rows of ~5 KB due in ten years (so the daemon admits none: enqueue alone). Drains: "
        f"{meta['messages']:,} rows of ~5 KB queued before the daemon starts, 1 configuration × 4 connections to "
        f"smtp-sink, daemon start to the last row `sent`; (c), (d), (e) in an order rotating by round.",
        "",
        "| | measurement | result | compared (same run) | latency | daemon CPU ms/msg | target (issue 13) | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += [
        "",
        f"Targets: {passed} pass, {missed} miss, {len(targets) - passed - missed} not measured. "
        f"Peak daemon threads {num(threads)}, peak RSS {num(rss)} MiB (VmHWM).",
    ]
    if incomplete:
        lines += ["", "Incomplete: " + "; ".join(incomplete) + "."]
    if meta.get("notes"):
        lines += ["", meta["notes"]]
    return "\n".join(lines) + "\n"
