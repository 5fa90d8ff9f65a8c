#!/usr/bin/python3
"""Verifies every DKIM-Signature of a message with dkimpy, an independent implementation.

usage: dkim_verify.py MESSAGE RECORDS
  MESSAGE  the message as the SMTP server stored it
  RECORDS  a JSON object {"SELECTOR._domainkey.DOMAIN": "v=DKIM1; k=...; p=..."}; it stands
           in for DNS through dkimpy's dnsfunc hook, so nothing leaves the machine.
prints one JSON object: {"signatures": [{"d": ..., "s": ..., "a": ..., "ok": true|false}], "error": ...}
"""
import json
import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    records = json.load(open(sys.argv[2]))
    records = {k.lower().rstrip("."): v for k, v in records.items()}

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        value = records.get(name.lower().rstrip("."))
        return value.encode() if value is not None else None

    verifier = dkim.DKIM(message)
    found = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    results = []
    error = None
    for index, value in enumerate(found):
        tags = dkim.util.parse_tag_value(value)
        try:
            ok = bool(verifier.verify(idx=index, dnsfunc=dnsfunc))
        except dkim.DKIMException as e:
            ok = False
            error = str(e)
        results.append({
            "d": tags.get(b"d", b"").decode(),
            "s": tags.get(b"s", b"").decode(),
            "a": tags.get(b"a", b"").decode(),
            "h": tags.get(b"h", b"").decode(),
            "ok": ok,
        })
    print(json.dumps({"signatures": results, "error": error}))


if __name__ == "__main__":
    main()
