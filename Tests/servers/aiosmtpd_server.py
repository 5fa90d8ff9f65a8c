#!/usr/bin/python3
"""A real SMTP server for Mailroute's tests: Debian's aiosmtpd on 127.0.0.1.

Binds an ephemeral port and prints "PORT <n>" once it listens. Each accepted message
is written to --out as N.eml (the DATA bytes) and N.json (envelope, login). Events
(connect, disconnect) are appended to --out/events.jsonl, so tests can count
connections. --auth may be given more than once: each USER:PASSWORD can log in, and
N.json records which one did. Runs until killed.
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--starttls", action="store_true", help="offer (and require) STARTTLS")
    p.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    p.add_argument("--auth", action="append", default=[], help="USER:PASSWORD that may log in (repeatable); required to send")
    p.add_argument("--reject-from", action="append", default=[])
    p.add_argument("--reject-rcpt", action="append", default=[])
    p.add_argument("--tempfail-rcpt", action="append", default=[])
    p.add_argument("--no-size-limit", action="store_true", help="accept DATA of any size (aiosmtpd's default limit is 32 MiB)")
    return p.parse_args()


# A parent that spawned us from a thread with signals blocked must still be able to stop us.
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])
args = parse_args()
os.makedirs(args.out, exist_ok=True)
counter = {"n": 0}


def event(kind, **fields):
    with open(os.path.join(args.out, "events.jsonl"), "a") as f:
        f.write(json.dumps({"event": kind, **fields}) + "\n")


class Handler:
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in args.reject_from:
            return "550 5.7.1 Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in args.reject_rcpt:
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if address in args.tempfail_rcpt:
            return "450 4.2.0 <%s>: Recipient address rejected: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        counter["n"] += 1
        n = counter["n"]
        base = os.path.join(args.out, "%06d" % n)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "login": session.auth_data,
                       "at": time.time()}, f)
        # The .eml appears last and whole: tests poll for it.
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 Ok: queued as TEST%06d" % n


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        event("connect")
        super().connection_made(transport)

    def connection_lost(self, exc):
        event("disconnect")
        super().connection_lost(exc)

    async def smtp_QUIT(self, arg):
        event("quit")
        return await super().smtp_QUIT(arg)


def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword):
        for login in args.auth:
            user, password = login.split(":", 1)
            if auth_data.login.decode() == user and auth_data.password.decode() == password:
                return AuthResult(success=True, auth_data=user)
    # handled=False makes aiosmtpd answer 535; True would leave the client waiting.
    return AuthResult(success=False, handled=False)


def main():
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def factory():
        kwargs = dict(hostname="mx.test.invalid", ident="Mailroute test server")
        if args.no_size_limit:
            kwargs.update(data_size_limit=None)
        if args.starttls:
            kwargs.update(tls_context=context, require_starttls=True)
        if args.auth:
            kwargs.update(authenticator=authenticator, auth_required=True,
                          auth_require_tls=not args.implicit_tls)
        return CountingSMTP(Handler(), **kwargs)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(factory, "127.0.0.1", 0, ssl=context if args.implicit_tls else None))
    port = server.sockets[0].getsockname()[1]
    print("PORT %d" % port, flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
