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
"""
import argparse
import asyncio
import json
import os
import signal

signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])

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
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)
state = {"data": 0, "stored": 0}


def event(kind):
    with open(os.path.join(args.out, "events.jsonl"), "a") as f:
        f.write(json.dumps({"event": kind}) + "\n")


def store(mail_from, rcpts, data):
    state["stored"] += 1
    base = os.path.join(args.out, "%06d" % state["stored"])
    with open(base + ".json", "w") as f:
        json.dump({"mail_from": mail_from, "rcpt_tos": rcpts, "login": None}, f)
    with open(base + ".eml.tmp", "wb") as f:
        f.write(data)
    os.rename(base + ".eml.tmp", base + ".eml")
    return state["stored"]


async def session(reader, writer):
    event("connect")
    try:
        if args.silent:
            await reader.read()  # until the client gives up
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
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            arg = line.decode(errors="replace").strip()[len(verb):].strip()
            if verb in ("EHLO", "HELO"):
                offer = b"250-PIPELINING\r\n" if args.pipelining else b""
                writer.write(b"250-fault.test\r\n" + offer + b"250-8BITMIME\r\n250 SIZE 104857600\r\n")
            elif verb == "MAIL":
                if len(reader._buffer) > 0:  # what the client sent before waiting for this reply
                    event("pipelined")
                sender, rcpts = arg.split(":", 1)[1].strip().split(" ")[0].strip("<>"), []
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
                if address in args.reject_rcpt:
                    writer.write(b"550 5.1.1 <%s>: Recipient address rejected: User unknown\r\n" % address.encode())
                elif address in args.tempfail_rcpt:
                    writer.write(b"450 4.2.0 <%s>: Recipient address rejected: try again later\r\n" % address.encode())
                else:
                    rcpts.append(address)
                    writer.write(b"250 2.1.5 Ok\r\n")
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
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    data += chunk
                if args.delay_data:
                    await asyncio.sleep(args.delay_data)
                if n == args.tempfail_data:
                    writer.write(b"451 4.3.0 Error: queue file write error\r\n")
                elif args.reject_data:
                    writer.write(b"554 5.7.1 Message rejected: looks like spam\r\n")
                else:
                    stored = store(mail_from, rcpts, data[:-3].replace(b"\r\n..", b"\r\n."))
                    writer.write(b"250 2.0.0 Ok: queued as FAULT%06d\r\n" % stored)
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
        event("disconnect")
        writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", 0)
    print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
