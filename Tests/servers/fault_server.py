#!/usr/bin/python3
"""A scriptable SMTP server for faults real servers do not make on demand.

Prints "PORT <n>" once it listens on 127.0.0.1. Accepted messages are written like
aiosmtpd_server.py does (N.eml, N.json in --out) and events to --out/events.jsonl.

Faults (counted across all connections):
  --silent                 accept TCP, never say anything
  --greeting CODE          answer the greeting with CODE and close
  --tempfail-data N        answer the Nth DATA's end with 451 (others 250)
  --reject-data            answer every DATA's end with 554
  --delay-data SECONDS     wait that long before answering each DATA's end
  --delay-rcpt SECONDS     wait that long before answering each RCPT
  --cut-data N             close the connection in the middle of the Nth message
  --drop-after N           close the connection after accepting the Nth message
  --reject-rcpt ADDR       550 for that recipient (repeatable)
  --tempfail-rcpt ADDR     450 for that recipient (repeatable)
  --reject-from ADDR       553 for that sender (repeatable)
  --pipelining             offer PIPELINING (RFC 2920): then RCPT without an accepted MAIL
                           and DATA without an accepted RCPT are refused (503, 554) as
                           Postfix does, and a MAIL that arrives with more commands behind
                           it is logged as the event "pipelined"
  --port N                 listen on that port (default: a free one); a restarted server
                           takes its old port back

Silence on demand (any mode): SIGUSR1 makes the server go silent (new connections are never
greeted, open sessions get no further reply until the client gives up), SIGUSR2 makes it
speak again. The event "silent" or "speaking" is logged.

Chaos (bench/soak): --chaos SEED draws, from a random.Random(SEED), one fault or none at each
step of each session, with these default rates (override with --rate NAME=P, repeatable;
--rate all=0 first makes a plain sink that still records what it accepts):
  greet_421      421 greeting, then close                       (per connection)
  greet_stall    accept TCP, never greet (one connection)       (per connection)
  mail_421       421 to MAIL FROM, then close                   (per transaction)
  rcpt_452       452 to a RCPT                                  (per recipient)
  drop_rcpt      close instead of answering a RCPT              (per recipient)
  drop_data_cmd  close instead of answering DATA                (per transaction)
  drop_in_data   close in the middle of the message             (per transaction)
  data_451       451 at the end of DATA (not stored)            (per transaction)
  stall          at a RCPT or the end of DATA, say nothing for --stall-seconds,
                 then close (nothing stored)                    (per transaction)
  drop_after_250 store, answer 250, then close the connection   (per transaction)
--reject-rcpt-prefix P answers 550 5.1.1 to every recipient whose local part starts with P.
No fault ever stores a message the client was not told 250 for, so a copy accepted twice
is the client's doing. Every accepted message is appended to --accepted FILE (JSON lines:
t, port, the Message-ID, the --token-header value, rcpts); faults go to events.jsonl with
their time and the message's token when known. In chaos mode no .eml files are written
unless --keep-eml.
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import time

signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2])

RATES = {"greet_421": 0.01, "greet_stall": 0.005, "mail_421": 0.005, "rcpt_452": 0.01, "drop_rcpt": 0.003,
         "drop_data_cmd": 0.004, "drop_in_data": 0.004, "data_451": 0.01, "stall": 0.003, "drop_after_250": 0.01}

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--silent", action="store_true")
p.add_argument("--greeting", type=int)
p.add_argument("--tempfail-data", type=int, default=0)
p.add_argument("--reject-data", action="store_true")
p.add_argument("--delay-data", type=float, default=0)
p.add_argument("--delay-rcpt", type=float, default=0)
p.add_argument("--cut-data", type=int, default=0)
p.add_argument("--drop-after", type=int, default=0)
p.add_argument("--reject-rcpt", action="append", default=[])
p.add_argument("--tempfail-rcpt", action="append", default=[])
p.add_argument("--reject-from", action="append", default=[])
p.add_argument("--pipelining", action="store_true")
p.add_argument("--port", type=int, default=0)
p.add_argument("--chaos", type=int, metavar="SEED")
p.add_argument("--rate", action="append", default=[], metavar="NAME=P")
p.add_argument("--stall-seconds", type=float, default=4.0)
p.add_argument("--reject-rcpt-prefix")
p.add_argument("--accepted", help="append every accepted message to this JSON-lines file")
p.add_argument("--token-header", default="X-Soak-Id")
p.add_argument("--keep-eml", action="store_true")
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)
state = {"data": 0, "stored": 0, "silent": False, "port": 0}
rates = dict(RATES)
for item in args.rate:
    name, _, value = item.partition("=")
    if name == "all":
        rates = {k: float(value) for k in rates}
    elif name in rates:
        rates[name] = float(value)
    else:
        p.error(f"unknown rate {name}; known: {', '.join(rates)}")
chaos = random.Random(args.chaos) if args.chaos is not None else None
# One handle each, line-buffered: a chaos run writes thousands of lines.
_events = open(os.path.join(args.out, "events.jsonl"), "a", buffering=1)
_accepted = open(args.accepted, "a", buffering=1) if args.accepted else None
HEADER_RE = re.compile(rb"^(message-id|" + re.escape(args.token_header.encode()).lower() + rb"):[ \t]*(.*?)\r?$",
                       re.IGNORECASE | re.MULTILINE)


def event(kind, **extra):
    _events.write(json.dumps({"event": kind, "t": round(time.time(), 3), **extra}) + "\n")


def fault(name):
    """Whether the chaos draw says `name` happens now."""
    return chaos is not None and rates[name] > 0 and chaos.random() < rates[name]


def headers_of(data):
    """(Message-ID, token) from the message's header block."""
    found = {}
    for m in HEADER_RE.finditer(data.split(b"\r\n\r\n", 1)[0]):
        found.setdefault(m.group(1).lower(), m.group(2).decode(errors="replace").strip())
    return found.get(b"message-id"), found.get(args.token_header.encode().lower())


def token_of(partial):
    return headers_of(partial)[1]


async def hush(reader):
    """Silent: say nothing more; wait for the client to give up (or the server to stop)."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass


def store(mail_from, rcpts, data):
    state["stored"] += 1
    if _accepted:
        message_id, token = headers_of(data)
        _accepted.write(json.dumps({"t": round(time.time(), 3), "port": state["port"], "message_id": message_id,
                                    "token": token, "rcpts": rcpts}) + "\n")
        if chaos is not None and not args.keep_eml:
            return state["stored"]
    base = os.path.join(args.out, "%06d" % state["stored"])
    with open(base + ".json", "w") as f:
        json.dump({"mail_from": mail_from, "rcpt_tos": rcpts, "login": None}, f)
    with open(base + ".eml.tmp", "wb") as f:
        f.write(data)
    os.rename(base + ".eml.tmp", base + ".eml")
    return state["stored"]


async def session(reader, writer):
    if chaos is None:
        event("connect")
    try:
        if args.silent or state["silent"]:
            await hush(reader)  # until the client gives up
            return
        if fault("greet_stall"):
            event("greet_stall")
            await hush(reader)
            return
        if fault("greet_421"):
            event("greet_421")
            writer.write(b"421 4.3.2 fault.test busy, try again later\r\n")
            await writer.drain()
            return
        if args.greeting:
            writer.write(b"%d 5.3.2 fault server says go away\r\n" % args.greeting)
            await writer.drain()
            return
        writer.write(b"220 fault.test ESMTP\r\n")
        mail_from, rcpts = None, []
        while True:
            line = await reader.readline()
            if not line:
                return
            if state["silent"]:
                event("silenced")
                await hush(reader)
                return
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            arg = line.decode(errors="replace").strip()[len(verb):].strip()
            if verb in ("EHLO", "HELO"):
                offer = b"250-PIPELINING\r\n" if args.pipelining else b""
                writer.write(b"250-fault.test\r\n" + offer + b"250-8BITMIME\r\n250 SIZE 104857600\r\n")
            elif verb == "MAIL":
                if len(reader._buffer) > 0:  # what the client sent before waiting for this reply
                    event("pipelined")
                sender, rcpts = arg.split(":", 1)[1].strip().split(" ")[0].strip("<>"), []
                if fault("mail_421"):
                    event("mail_421")
                    writer.write(b"421 4.3.0 fault.test closing: too many sessions\r\n")
                    await writer.drain()
                    return
                if sender in args.reject_from:
                    mail_from = None
                    writer.write(b"553 5.7.1 <%s>: Sender address rejected: not owned by user\r\n" % sender.encode())
                else:
                    mail_from = sender
                    writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT" and args.pipelining and mail_from is None:
                writer.write(b"503 5.5.1 Error: need MAIL command\r\n")
            elif verb == "DATA" and args.pipelining and not rcpts:
                writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
            elif verb == "RCPT":
                address = arg.split(":", 1)[1].strip().split(" ")[0].strip("<>")
                if args.delay_rcpt:
                    await asyncio.sleep(args.delay_rcpt)
                if fault("drop_rcpt"):
                    event("drop_rcpt", rcpt=address)
                    writer.transport.abort()
                    return
                if fault("stall"):
                    event("stall", at="rcpt", rcpt=address)
                    await asyncio.sleep(args.stall_seconds)
                    writer.transport.abort()
                    return
                if args.reject_rcpt_prefix and address.split("@")[0].startswith(args.reject_rcpt_prefix):
                    writer.write(b"550 5.1.1 <%s>: Recipient address rejected: User unknown in soak table\r\n" % address.encode())
                elif fault("rcpt_452"):
                    event("rcpt_452", rcpt=address)
                    writer.write(b"452 4.3.1 <%s>: Insufficient system storage\r\n" % address.encode())
                elif address in args.reject_rcpt:
                    writer.write(b"550 5.1.1 <%s>: Recipient address rejected: User unknown\r\n" % address.encode())
                elif address in args.tempfail_rcpt:
                    writer.write(b"450 4.2.0 <%s>: Recipient address rejected: try again later\r\n" % address.encode())
                else:
                    rcpts.append(address)
                    writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == "DATA" and fault("drop_data_cmd"):
                event("drop_data_cmd")
                writer.transport.abort()
                return
            elif verb == "DATA":
                state["data"] += 1
                n = state["data"]
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                if n == args.cut_data:
                    await reader.read(200)
                    event("cut")
                    writer.transport.abort()
                    return
                cut = fault("drop_in_data")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    data += chunk
                    if cut and len(data) > 300:
                        event("drop_in_data", token=token_of(data))
                        writer.transport.abort()
                        return
                if state["silent"]:
                    event("silenced", token=token_of(data))
                    await hush(reader)
                    return
                if fault("stall"):
                    event("stall", at="data", token=token_of(data))
                    await asyncio.sleep(args.stall_seconds)
                    writer.transport.abort()
                    return
                if fault("data_451"):
                    event("data_451", token=token_of(data))
                    writer.write(b"451 4.3.0 Error: queue file write error (soak)\r\n")
                    await writer.drain()
                    continue
                if args.delay_data:
                    await asyncio.sleep(args.delay_data)
                if n == args.tempfail_data:
                    writer.write(b"451 4.3.0 Error: queue file write error\r\n")
                elif args.reject_data:
                    writer.write(b"554 5.7.1 Message rejected: looks like spam\r\n")
                else:
                    stored = store(mail_from, rcpts, data[:-3].replace(b"\r\n..", b"\r\n."))
                    writer.write(b"250 2.0.0 Ok: queued as FAULT%06d\r\n" % stored)
                    if fault("drop_after_250"):
                        await writer.drain()
                        event("drop_after_250")
                        writer.transport.abort()
                        return
                    if n == args.drop_after:
                        await writer.drain()
                        event("drop")
                        return
            elif verb == "RSET":
                mail_from, rcpts = None, []
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "NOOP":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                event("quit")
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        if chaos is None:
            event("disconnect")
        writer.close()


def set_silent(silent):
    state["silent"] = silent
    event("silent" if silent else "speaking")


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, set_silent, True)
    loop.add_signal_handler(signal.SIGUSR2, set_silent, False)
    server = await asyncio.start_server(session, "127.0.0.1", args.port, backlog=512)
    state["port"] = server.sockets[0].getsockname()[1]
    print("PORT %d" % state["port"], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
