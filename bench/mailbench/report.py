"""The one table (markdown) and the chart, computed from all rounds of one run.

Rates, CPU and latencies are medians over the rounds (min-max in brackets); ratios are the
median of per-round ratios (both sides measured in the same round); peaks (RSS, threads,
configurations in error, fallbacks) are the worst round."""

import statistics

PASS, MISS, NONE = "pass", "**MISS**", "not measured"


def vals(runs, field):
    return [r[field] for r in runs or [] if r.get(field) is not None]


def med(runs, field):
    v = vals(runs, field)
    return statistics.median(v) if v else None


def worst(runs, field):
    v = vals(runs, field)
    return max(v) if v else None


def paired(a_runs, b_runs, combine):
    """Median over rounds of combine(a, b), for rounds where both have a value."""
    v = [combine(a, b) for a, b in zip(a_runs or [], b_runs or []) if a is not None and b is not None]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def rate_of(run):
    """(rate, is_upper_bound): a drain that was given up counts with the rate it stayed below."""
    if run.get("rate"):
        return run["rate"], False
    if run.get("rate_below"):
        return run["rate_below"], True
    return None, False


def ratio(a_runs, b_runs):
    """Median over rounds of a's rate / b's rate (same round), and whether that is only an upper
    bound because some drain of a was given up. Rounds where b did not complete are left out."""
    pairs = []
    for a, b in zip(a_runs or [], b_runs or []):
        rate, bound = rate_of(a)
        if rate and b.get("rate"):
            pairs.append((rate / b["rate"], bound))
    if not pairs:
        return None, False
    return statistics.median(x for x, _ in pairs), any(bound for _, bound in pairs)


def num(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def times(x, what="", bound=False):
    return "–" if x is None else f"{'< ' if bound else ''}{x:.2f}×{what}"


def measured(runs, field, unit, digits=0, incomplete=True):
    """'812 msg/s (780–850)', and a word on rounds that were given up (with the rate they stayed
    below, for drains)."""
    v = vals(runs, field)
    parts = []
    if v:
        text = f"{num(statistics.median(v), digits)} {unit}"
        if len(v) > 1:
            text += f" ({num(min(v), digits)}–{num(max(v), digits)})"
        parts.append(text)
    bad = [r for r in runs or [] if not r.get("complete")]
    if bad and incomplete:
        r = bad[0]
        detail = f"{r['sent']:,}/{r['expected']:,} sent, " if "expected" in r else ""
        detail += r.get("note", "")
        below = vals(bad, "rate_below") if field == "rate" else []
        if below:
            detail += f"; < {num(max(below))} msg/s"
        parts.append(f"given up in {len(bad)} of {len(runs)} rounds ({detail})")
    return "; ".join(parts) or "not measured"


def mark(ok):
    return NONE if ok is None else (PASS if ok else MISS)


class Report:
    COLUMNS = ["#", "measurement", "result", "compared", "daemon CPU/msg", "peak RSS", "peak threads",
               "configs in error", "fallbacks", "target (engine issue)", ""]

    def __init__(self, results, meta):
        self.r = results
        self.meta = meta
        self.rows = []
        self.targets = []  # (label, score, ok): score >= 1 means the target is met
        self.throughput = []  # (label, runs, is_peer)
        self._build()

    def daemon_cells(self, runs):
        cpu, per_sent = med(runs, "cpu_ms_per_msg"), med(runs, "cpu_ms_per_sent")
        rss, anon = worst(runs, "peak_rss_mib"), worst(runs, "peak_anon_mib")
        return [f"{num(cpu, 3)} ms" if cpu is not None else
                (f"{num(per_sent, 3)} ms per sent msg" if per_sent is not None else "–"),
                (f"{num(rss)} MiB" + (f" (anon {num(anon)})" if anon is not None else "")) if rss else "–",
                num(worst(runs, "peak_threads")), num(worst(runs, "error_configs")), num(worst(runs, "fallbacks"))]

    def add(self, no, what, result, compared="", daemon=None, target="", ok=None, score=None, short=None):
        """One table row; a row with a target also becomes a bar of the chart, labelled `short`."""
        cells = daemon if daemon is not None else ["", "", "", "", ""]
        self.rows.append([no, what, result, compared, *cells, target, mark(ok) if target else ""])
        if target:
            self.targets.append((f"{short or what}: {target}", score, ok))

    @staticmethod
    def at_least(value, limit, bound=False):
        """(ok, score); `bound`: value is an upper bound, which can only prove a miss."""
        if value is None:
            return None, None
        if bound and value >= limit:
            return None, None
        return value >= limit, value / limit

    @staticmethod
    def at_most(value, limit):
        return (None, None) if value is None else (value <= limit, limit / max(value, 1e-9))

    def _build(self):
        r = self.r
        one = r.get("one")
        cpu_one = med(one, "cpu_ms_per_msg")

        ok, score = self.at_most(cpu_one, 0.35)
        self.add("1", "drain, 1 configuration × 4 connections", measured(one, "rate", "msg/s"), "",
                 self.daemon_cells(one), "CPU ≤ 0.35 ms/msg", ok, score, "1 config")
        self.throughput.append(("Mailroute, 1 config", one, False))

        x, bound = ratio(r.get("hundred"), one)
        ok, score = self.at_least(x, 0.9, bound)
        self.add("1", "drain, 100 configurations × 4", measured(r.get("hundred"), "rate", "msg/s"),
                 times(x, " row 1", bound), self.daemon_cells(r.get("hundred")), "≥ 0.9× row 1", ok, score,
                 "100 configs")
        self.throughput.append(("Mailroute, 100 configs", r.get("hundred"), False))

        thousand = r.get("thousand")
        x, bound = ratio(thousand, one)
        complete = all(t.get("complete") for t in thousand) if thousand else None
        self.add("1", "drain, 1,000 configurations × 1", measured(thousand, "rate", "msg/s"),
                 times(x, " row 1", bound), self.daemon_cells(thousand), "completes", complete,
                 None if complete is None else (1.0 if complete else 0.5), "1,000 configs")
        self.throughput.append(("Mailroute, 1,000 configs", thousand, False))

        wire = r.get("wire")
        x, bound = ratio(one, wire)
        ok, score = self.at_least(x, 0.4, bound)
        self.add("2", "wire: smtp-source -d -s 4 (no queue)", measured(wire, "rate", "msg/s"),
                 f"row 1 = {times(x, ' wire', bound)}", None, "row 1 ≥ 0.4× wire", ok, score, "vs wire")
        self.throughput.append(("wire: smtp-source -s 4", wire, True))

        postfix = r.get("postfix")
        x, bound = ratio(one, postfix)
        ok, score = self.at_least(x, 4.0, bound)
        pf_cpu = med(postfix, "cpu_ms_per_msg")
        self.add("2", "Postfix 3.7 relay, hold queue released", measured(postfix, "rate", "msg/s"),
                 f"row 1 = {times(x, ' Postfix', bound)}",
                 [f"Postfix {num(pf_cpu, 3)} ms" if pf_cpu is not None else "–", "", "", "", ""],
                 "row 1 ≥ 4× Postfix", ok, score, "vs Postfix")
        self.throughput.append(("Postfix 3.7 relay", postfix, True))

        backlog = r.get("backlog")
        x, bound = ratio(backlog, one)
        ok, score = self.at_least(x, 0.9, bound)
        self.add("3", f"drain behind {self.meta['backlog']:,} rows due in 10 years",
                 measured(backlog, "rate", "msg/s"), times(x, " row 1", bound), self.daemon_cells(backlog),
                 "≥ 0.9× row 1", ok, score, "behind backlog")
        self.throughput.append(("Mailroute, behind backlog", backlog, False))
        reset = med(backlog, "reset_s")
        ok, score = self.at_most(reset, 1.0)
        self.add("3", "password_reset inserted after them: sent, after daemon start",
                 measured(backlog, "reset_s", "s", 2, incomplete=False), "", None, "≤ 1 s", ok, score, "password_reset")

        idle = r.get("idle")
        p99 = med(idle, "p99_ms")
        ok, score = self.at_most(p99, 15.0)
        self.add("5", f"idle pickup, {self.meta['pickups']} rows one at a time: insert-commit to sent",
                 f"p50 {num(med(idle, 'p50_ms'), 1)} ms, p99 {measured(idle, 'p99_ms', 'ms', 1)}", "",
                 self.daemon_cells(idle), "p99 ≤ 15 ms", ok, score, "idle pickup")

        enq = r.get("enqueuer")
        p99 = med(enq, "insert_p99_ms")
        if enq and all(x.get("complete") for x in enq):
            drain_rate = f"{num(med(enq, 'rate'))} msg/s"
        elif enq and all("sent" in x for x in enq):  # the enqueuer's time was up first
            drain_rate = (f"{num(statistics.median(x['sent'] for x in enq))} of {enq[0]['expected']:,} sent "
                          f"in {num(statistics.median(x['elapsed'] for x in enq))} s")
        else:
            drain_rate = "–"
        ok, score = self.at_most(p99, 20.0)
        self.add("5", "concurrent enqueuer during a drain: its INSERT+COMMIT",
                 f"p99 {measured(enq, 'insert_p99_ms', 'ms', 1, incomplete=False)}",
                 f"{num(med(enq, 'inserts'))} rows inserted; the drain meanwhile: {drain_rate}",
                 self.daemon_cells(enq), "p99 ≤ 20 ms", ok, score, "enqueuer INSERT")

        idle_cpu = med(idle, "idle_cpu_pct")
        ok, score = self.at_most(idle_cpu, 1.0)
        self.add("5", f"idle daemon CPU over {self.meta['idle_seconds']:.0f} s",
                 measured(idle, "idle_cpu_pct", "% of a core", 2), "", None, "≤ 1 %", ok, score, "idle CPU")

        ossl = r.get("openssl")
        rsa_ms, ed_ms = med(ossl, "rsa_ms"), med(ossl, "ed25519_ms")
        self.add("6", "openssl speed: sign rsa2048 / ed25519",
                 f"{num(rsa_ms, 3)} ms / {num(ed_ms, 4)} ms", "per signature, one core")
        for key, label, sig in (("rsa", "RSA-2048", rsa_ms),
                                ("both", "RSA-2048 + Ed25519", None if rsa_ms is None or ed_ms is None
                                 else rsa_ms + ed_ms)):
            runs = r.get(key)
            extra = paired(runs, one, lambda a, b: a["cpu_ms_per_msg"] - b["cpu_ms_per_msg"]
                           if a.get("cpu_ms_per_msg") is not None and b.get("cpu_ms_per_msg") is not None else None)
            limit = 1.2 * sig if sig is not None else None
            ok = None if extra is None or limit is None else extra <= limit
            score = None if ok is None else limit / max(extra, 1e-3)
            self.add("6", f"drain signed {label}", measured(runs, "rate", "msg/s"),
                     f"extra CPU {num(extra, 3)} ms vs 1.2× sig {num(limit, 3)} ms", self.daemon_cells(runs),
                     "extra ≤ 1.2× signature", ok, score, f"{label} signing")
            self.throughput.append((f"Mailroute, {label} signed", runs, False))

        daemon_runs = [x for key in ("one", "hundred", "thousand", "backlog", "idle", "enqueuer", "rsa", "both")
                       for x in r.get(key, [])]
        threads, rss = worst(daemon_runs, "peak_threads"), worst(daemon_runs, "peak_rss_mib")
        anon = worst(daemon_runs, "peak_anon_mib")
        errors = sum(vals(daemon_runs, "error_configs")) if vals(daemon_runs, "error_configs") else None
        fallbacks = sum(vals(daemon_runs, "fallbacks")) if vals(daemon_runs, "fallbacks") else None
        n = len(daemon_runs)
        ok, score = self.at_most(threads, 32)
        self.add("4", f"every daemon run ({n}): peak threads", num(threads), "", None, "≤ 32", ok, score, "threads")
        ok, score = self.at_most(rss, 64)
        self.add("4", f"every daemon run ({n}): peak RSS (VmHWM)",
                 f"{num(rss)} MiB" + (f" (peak anonymous part {num(anon)} MiB)" if anon is not None else ""),
                 "", None, "≤ 64 MiB", ok, score, "RSS")
        ok = None if errors is None else errors == 0 and fallbacks == 0
        self.add("4", f"every daemon run ({n}): configs in error / fallback messages, summed",
                 f"{num(errors)} / {num(fallbacks)}", "", None, "0 and 0", ok,
                 None if ok is None else (1.0 if ok else 0.5), "errors, fallbacks")

    # -- output ------------------------------------------------------------------------------

    def markdown(self):
        m = self.meta
        passed = sum(1 for _, _, ok in self.targets if ok)
        missed = sum(1 for _, _, ok in self.targets if ok is False)
        lines = [
            f"# Mailroute bench, {m['date']}",
            "",
            f"Commit {m['commit']}; {m['messages']:,} messages of ~5 KB per drain; {m['rounds']} round(s), "
            f"median with min–max in brackets{'; QUICK smoke run, not a measurement' if m['quick'] else ''}. "
            f"All traffic to one smtp-sink on 127.0.0.1. {m['machine']}. Load average at start {m['load_start']}, "
            f"at end {m['load_end']}: a shared, noisy machine, so compare rows of the same run, not across runs. "
            f"Run took {m['wall_min']:.1f} min. [delivery] allowed_networks: {m['allowed_networks']}.",
            "",
            "| " + " | ".join(self.COLUMNS) + " |",
            "|" + "|".join("---" for _ in self.COLUMNS) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines += [
            "",
            f"Targets: {passed} pass, {missed} miss, {len(self.targets) - passed - missed} not measured.",
            "",
            "Drain = daemon start to the last row `sent` (polled every 25 ms), rows queued in one transaction "
            "before the start. Daemon CPU/msg = utime+stime of mailrouted over that drain / N. Ratios are "
            "medians of per-round ratios. A drain given up (time limit, or no progress) would have taken "
            "longer than it ran: its rate is below N / that time, and a ratio marked < is an upper bound. "
            "Peaks are the worst round; RSS includes file pages (anon: the anonymous part, sampled). Postfix "
            "CPU is its processes' CPU during the release. Signed rows: extra CPU = signed minus unsigned CPU "
            "per message, same round.",
        ]
        if m.get("logs"):
            lines += ["", f"Log excerpts of the daemon runs that did not complete or ended with errors: `{m['logs']}/`."]
        return "\n".join(lines) + "\n"

    def chart(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1, 1]})
        # (label, rates, peer, bound): a drain given up in every round is drawn hatched at the
        # rate it stayed below.
        items = []
        for label, runs, peer in self.throughput:
            rates, below = vals(runs, "rate"), vals(runs, "rate_below")
            items.append((label, rates or ([max(below)] if below else [0.0]), peer, not rates))
        y = list(range(len(items)))[::-1]
        medians = [statistics.median(v) for _, v, _, _ in items]
        lo = [m - min(v) for m, (_, v, _, _) in zip(medians, items)]
        hi = [max(v) - m for m, (_, v, _, _) in zip(medians, items)]
        bars = left.barh(y, medians, xerr=[lo, hi], capsize=3, error_kw={"elinewidth": 0.8},
                         color=["#888888" if peer else "#3b6fb6" for _, _, peer, _ in items])
        for bar, (_, _, _, bound) in zip(bars, items):
            if bound:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
        left.set_yticks(y, [label for label, _, _, _ in items])
        for yy, (_, v, _, bound) in zip(y, items):
            text = f"< {max(v):,.0f}, given up" if bound else f"{statistics.median(v):,.0f}"
            left.text(max(v), yy, "  " + text, va="center", fontsize=9)
        left.set_xlabel("messages per second (median, min–max)")
        left.set_title("Drain of queued ~5 KB messages to smtp-sink (grey: peers)")
        left.set_xlim(0, max(max(v) for _, v, _, _ in items) * 1.3 if items else 1)

        targets = [(label, score, ok) for label, score, ok in self.targets if score is not None]
        y = list(range(len(targets)))[::-1]
        scores = [min(max(score, 0.02), 50) for _, score, _ in targets]
        right.barh(y, scores, color=["#3a9a4a" if ok else "#c8412f" for _, _, ok in targets])
        right.axvline(1.0, color="black", linewidth=1)
        right.set_xscale("log")
        right.set_yticks(y, [label for label, _, _ in targets], fontsize=9)
        right.set_xlabel("measured vs target, ≥ 1 passes (yes/no targets: 1 or 0.5)")
        right.set_title("Engine issue targets")
        m = self.meta
        fig.suptitle(f"Mailroute bench {m['date']}, commit {m['commit']}, {m['messages']:,} messages, "
                     f"{m['rounds']} round(s){' (quick)' if m['quick'] else ''}; shared 2-core VM, noisy")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
