#!/usr/bin/python3
"""Every resource of the HTTP API (SPEC §9) from Python's urllib, as a platform's service
would call it: each success and each error code the resource has. Run by APIDaemonTests
against a real mailrouted; prints one line per failed expectation and exits 1 if any.

Usage: api_urllib.py BASE_URL TOKEN SMTP_PORT
"""
import json
import sys
import urllib.error
import urllib.request

base, token, smtp_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
failures = []


def call(method, path, body=None, auth=True, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method)
    if auth:
        request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def expect(what, status, reply, wanted, check=None):
    got_status, body = reply
    if got_status != status:
        failures.append(f"{what}: status {got_status}, wanted {status}: {body}")
        return body
    if status >= 400:
        if not isinstance(body, dict) or not body.get("error", {}).get("message"):
            failures.append(f"{what}: error body {body}")
        elif wanted and body["error"].get("field") != wanted:
            failures.append(f"{what}: field {body['error'].get('field')}, wanted {wanted}")
    if check and not check(body):
        failures.append(f"{what}: unexpected body {body}")
    return body


config = {"tenant": "py", "name": "main", "host": "127.0.0.1", "port": smtp_port, "security": "none",
          "from_address": "reports@py.test", "username": "bob", "password": "urllib-secret-pw"}
# Configurations
expect("no token", 401, call("GET", "/v1/configurations", auth=False), None)
expect("add", 201, call("POST", "/v1/configurations", config), None,
       lambda b: b["has_password"] is True and "password" not in b and b["status"] == "not_verified")
expect("add again", 409, call("POST", "/v1/configurations", config), None)
expect("add misspelt", 400, call("POST", "/v1/configurations", {**config, "name": "x", "hots": "a"}), "hots")
expect("add bad port", 400, call("POST", "/v1/configurations", {**config, "name": "x", "port": 0}), "port")
expect("add huge", 413, call("POST", "/v1/configurations", raw=b'{"a":"' + b"x" * 70000 + b'"}'), None)
expect("list", 200, call("GET", "/v1/configurations?tenant=py"), None, lambda b: [c["name"] for c in b] == ["main"])
expect("show", 200, call("GET", "/v1/configurations/py/main"), None, lambda b: b["username"] == "bob")
expect("show missing", 404, call("GET", "/v1/configurations/py/none"), None)
expect("edit", 200, call("PATCH", "/v1/configurations/py/main", {"from_name": "Py Reports", "username": ""}), None,
       lambda b: b["from_name"] == "Py Reports" and b["has_password"] is False)
expect("edit bad", 400, call("PATCH", "/v1/configurations/py/main", {"reply_to": "no at sign"}), "reply_to")
expect("edit missing", 404, call("PATCH", "/v1/configurations/py/none", {"port": 25}), None)
expect("verify", 200, call("POST", "/v1/configurations/py/main/verify"), None, lambda b: b["ok"] is True)
expect("verify missing", 404, call("POST", "/v1/configurations/py/none/verify"), None)
expect("test", 200, call("POST", "/v1/configurations/py/main/test", {"to": "someone@example.test"}), None,
       lambda b: b["ok"] is True and b["final_reply"].startswith("250"))
expect("test bad to", 400, call("POST", "/v1/configurations/py/main/test", {"to": "nobody"}), "to")
expect("add second", 201, call("POST", "/v1/configurations", {**config, "name": "backup"}), None)
expect("delete default", 422, call("DELETE", "/v1/configurations/py/main"), None)
expect("disable default", 422, call("POST", "/v1/configurations/py/main/disable"), None)
expect("disable", 200, call("POST", "/v1/configurations/py/backup/disable"), None, lambda b: b["enabled"] is False)
expect("default disabled", 422, call("POST", "/v1/configurations/py/backup/default"), None)
expect("enable", 200, call("POST", "/v1/configurations/py/backup/enable"), None, lambda b: b["enabled"] is True)
expect("default", 200, call("POST", "/v1/configurations/py/backup/default"), None, lambda b: b["default"] == "py/backup")
expect("default missing", 404, call("POST", "/v1/configurations/py/none/default"), None)
# Routes
expect("route set", 200, call("PUT", "/v1/routes", {"tenant": "py", "kind": "category", "key": "invite", "config": "main"}), None,
       lambda b: b["config"] == "py/main")
expect("route set missing config", 404, call("PUT", "/v1/routes", {"tenant": "py", "kind": "category", "key": "invite", "config": "none"}), None)
expect("route set wildcard", 400, call("PUT", "/v1/routes", {"tenant": "py", "kind": "cname", "key": "*.py.test", "config": "main"}), "cname")
expect("route list", 200, call("GET", "/v1/routes?tenant=py"), None, lambda b: len(b) == 1)
expect("resolve", 200, call("GET", "/v1/routes/resolve?tenant=py&category=invite"), None,
       lambda b: b["config"] == "py/main" and b["route"] == "category" and b["trail"])
expect("resolve bad", 400, call("GET", "/v1/routes/resolve?tenant=py&planet=mars"), "planet")
expect("route remove", 200, call("DELETE", "/v1/routes", {"tenant": "py", "kind": "category", "key": "invite"}), None)
expect("route remove again", 404, call("DELETE", "/v1/routes", {"tenant": "py", "kind": "category", "key": "invite"}), None)
# Messages
message = {"tenant": "py", "category": "invite", "rcpt_to": ["Ann <ann@example.test>"], "subject": "Welcome",
           "text_body": "Hello", "idempotency_key": "urllib-1",
           "attachments": [{"filename": "hello.txt", "content_base64": "aGVsbG8="}]}
created = expect("enqueue", 201, call("POST", "/v1/messages", message), None, lambda b: isinstance(b.get("id"), int))
message_id = created.get("id") if isinstance(created, dict) else 0
expect("enqueue again", 409, call("POST", "/v1/messages", message), None, lambda b: b.get("id") == message_id)
expect("enqueue bad", 400, call("POST", "/v1/messages", {**message, "idempotency_key": None, "cc": ["x"]}), "cc[0]")
# Refused by the database's own CHECKs (SQLite's or PostgreSQL's sentence), still a 400 naming the column.
expect("enqueue bad category", 400, call("POST", "/v1/messages", {**message, "idempotency_key": None, "category": "Bad Name"}), "category")
expect("enqueue subject with a line break", 400,
       call("POST", "/v1/messages", {**message, "idempotency_key": None, "subject": "a\r\nBcc: x@y.test"}), "subject")
expect("get", 200, call("GET", f"/v1/messages/{message_id}"), None, lambda b: b["subject"] == "Welcome" and "attempt_log" in b)
expect("get missing", 404, call("GET", "/v1/messages/987654321"), None)
expect("get bad id", 400, call("GET", "/v1/messages/x1"), "id")
expect("list", 200, call("GET", "/v1/messages?tenant=py&limit=10"), None, lambda b: any(m["id"] == message_id for m in b))
expect("list bad", 400, call("GET", "/v1/messages?status=lost"), "status")
expect("cancel missing", 404, call("POST", "/v1/messages/987654321/cancel"), None)
expect("retry missing", 404, call("POST", "/v1/messages/987654321/retry"), None)
expect("stats", 200, call("GET", "/v1/stats"), None, lambda b: all(k in b for k in ("queued", "sent", "failed", "sent_last_minute")))
# Cleanup leaves the default last.
expect("delete", 200, call("DELETE", "/v1/configurations/py/main"), None, lambda b: b["deleted"] == "py/main")
expect("delete missing", 404, call("DELETE", "/v1/configurations/py/main"), None)

for line in failures:
    print(line)
print(f"api_urllib: {len(failures)} failure(s)")
sys.exit(1 if failures else 0)
