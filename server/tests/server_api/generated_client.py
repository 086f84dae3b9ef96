"""A client generated from natter's OpenAPI document by openapi-python-client — nothing
hand-written — makes a channel, sends a message into it and reads the history back.

Environment: NATTER_API (the web endpoint's base URL), NATTER_API_KEY (a write key); users
u-ann and u-bot exist.
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from openapi_spec_validator import validate

BASE = os.environ["NATTER_API"]
KEY = os.environ["NATTER_API_KEY"]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


with urllib.request.urlopen(f"{BASE}/api/v1/openapi.json") as r:
    doc = json.loads(r.read())
validate(doc)
check(doc["openapi"].startswith("3.1"), "the served document is OpenAPI 3.1 and validates")

with tempfile.TemporaryDirectory() as d:
    spec = os.path.join(d, "openapi.json")
    with open(spec, "w") as f:
        json.dump(doc, f)
    gen = subprocess.run([os.path.join(os.path.dirname(sys.executable), "openapi-python-client"), "generate",
                          "--path", spec, "--output-path", os.path.join(d, "client"), "--meta", "none"],
                         capture_output=True, text=True)
    check(gen.returncode == 0, f"openapi-python-client generated a client {gen.stdout[-400:]} {gen.stderr[-400:]}")
    sys.path.insert(0, d)
    pkg = importlib.import_module("client")
    api = importlib.import_module("client.api.default")
    models = importlib.import_module("client.models")
    mod = lambda name: importlib.import_module(f"client.api.default.{name}")  # noqa: E731

    c = pkg.AuthenticatedClient(base_url=BASE, token=KEY)
    made = mod("create_conversation").sync(client=c, body=models.CreateConversation(
        kind=models.Kind.CHANNEL, name="generated", creator="u-ann", members=["u-bot"]))
    check(isinstance(made, models.Conversation) and made.name == "generated" and len(made.members) == 2,
          f"create_conversation made the channel: {made}")
    sent = mod("send_message").sync(client=c, id=made.conversation_id,
                                    body=models.SendMessage(sender="u-bot", text="from a generated client"),
                                    idempotency_key="gen-1")
    check(isinstance(sent, models.Sent) and sent.seq > 0 and not sent.duplicate, f"send_message committed: {sent}")
    again = mod("send_message").sync(client=c, id=made.conversation_id,
                                     body=models.SendMessage(sender="u-bot", text="from a generated client"),
                                     idempotency_key="gen-1")
    check(again.seq == sent.seq and again.duplicate, "the same Idempotency-Key sends once")
    page = mod("history").sync(client=c, id=made.conversation_id, user="u-ann")
    texts = [e.text for e in page.events if e.type_ == "message"]
    check(texts == ["from a generated client"], f"history reads it back: {texts}")
    err = mod("get_conversation").sync_detailed(client=c, id=made.conversation_id, user="nobody")
    check(err.status_code == 404 and isinstance(err.parsed, models.ApiError) and err.parsed.error.code == "NOT_FOUND",
          f"errors come typed: {err.status_code} {err.parsed}")
print("all checks passed", flush=True)
