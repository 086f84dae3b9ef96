"""A Web Push service on loopback (RFC 8030), the provider side done faithfully, for natter's
push tests: it hands out subscriptions like a browser's PushManager (it keeps each device's
P-256 private key and auth secret), checks every push request's VAPID authorization
(RFC 8292: an ES256 JWT over the endpoint's origin, signed by the key in `k`), decrypts the
aes128gcm body with the independent `http_ece` library (RFC 8291), and records what it got.

GET  /subscribe/<device>       -> {"endpoint", "p256dh", "auth"} (base64url)
GET  /subscribe/<device>?keys=device   -> {"endpoint"}: the device brings its own keys (as
                                  APNs and FCM apps do); bodies are recorded as they came
POST /push/<device>            the push service endpoint
POST /mode/<device>?status=410&retry_after=3&count=1&delay=0   answer the next `count`
                               pushes so (after `delay` seconds)
POST /down/<device>?secs=60    answer 503 to everything for that long
POST /clear/<device>           answer normally again
GET  /received/<device>        -> [{"status" (null while the answer is delayed), "payload" (base64url plaintext), "body"
                                    (base64url, for devices with their own keys), "length",
                                    "topic", "urgency", "ttl", "at"}]
Prints "port <n>" once listening.
"""
import base64
import os
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

lock = threading.Lock()
devices = {}  # device -> {"key", "auth", "received": [], "modes": []}


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def check_vapid(header, origin):
    """The problem with a VAPID Authorization header, or None if it is right."""
    if not header or not header.startswith("vapid "):
        return "no vapid authorization"
    params = dict(p.strip().split("=", 1) for p in header[6:].split(","))
    token, k = params.get("t"), params.get("k")
    if not token or not k:
        return "t and k are required"
    head_b64, claims_b64, sig_b64 = token.split(".")
    head = json.loads(b64d(head_b64))
    claims = json.loads(b64d(claims_b64))
    if head.get("alg") != "ES256":
        return "alg must be ES256"
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(k))
    sig = b64d(sig_b64)
    if len(sig) != 64:
        return "signature must be 64 bytes"
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "bad signature"
    if claims.get("aud") != origin:
        return f"aud {claims.get('aud')!r} is not {origin!r}"
    now = time.time()
    if not (now < claims.get("exp", 0) <= now + 24 * 3600 + 60):
        return "exp must be in the next 24 hours"
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        return "sub must be mailto: or https:"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts[0] == "subscribe" and "keys=device" in url.query:
            with lock:
                devices[parts[1]] = {"key": None, "auth": None, "received": [], "modes": []}
            port = self.server.server_address[1]
            self.reply(200, {"endpoint": f"http://127.0.0.1:{port}/push/{parts[1]}"})
        elif parts[0] == "subscribe":
            key = ec.generate_private_key(ec.SECP256R1())
            auth = os.urandom(16)
            with lock:
                devices[parts[1]] = {"key": key, "auth": auth, "received": [], "modes": []}
            public = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            port = self.server.server_address[1]
            self.reply(200, {
                "endpoint": f"http://127.0.0.1:{port}/push/{parts[1]}",
                "p256dh": b64e(public),
                "auth": b64e(auth),
            })
        elif parts[0] == "received":
            with lock:
                got = list(devices.get(parts[1], {}).get("received", []))
            self.reply(200, got)
        else:
            self.reply(404)

    def do_POST(self):
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if parts[0] == "clear":
            with lock:
                devices[parts[1]]["modes"].clear()
            return self.reply(200, {})
        if parts[0] == "down":
            # The service is down for `secs`: every push meanwhile gets 503.
            with lock:
                devices[parts[1]]["down_until"] = time.time() + float(parse_qs(url.query)["secs"][0])
            return self.reply(200, {})
        if parts[0] == "mode":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            with lock:
                devices[parts[1]]["modes"].append(
                    [int(q["status"]), q.get("retry_after"), int(q.get("count", "1")), float(q.get("delay", "0"))]
                )
            return self.reply(200, {})
        if parts[0] != "push" or parts[1] not in devices:
            return self.reply(404)
        dev = devices[parts[1]]
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        problem = check_vapid(self.headers.get("Authorization"), origin)
        if problem is None and self.headers.get("Content-Encoding") != "aes128gcm":
            problem = "Content-Encoding must be aes128gcm"
        if problem is None and not self.headers.get("TTL", "").isdigit():
            problem = "TTL is required"
        record = {
            "at": time.time(),
            "length": len(body),
            "topic": self.headers.get("Topic"),
            "urgency": self.headers.get("Urgency"),
            "ttl": self.headers.get("TTL"),
            "problem": problem,
        }
        if problem is None and dev["key"] is None:
            record["body"] = b64e(body)
        elif problem is None:
            try:
                plain = http_ece.decrypt(body, private_key=dev["key"], auth_secret=dev["auth"], version="aes128gcm")
                record["payload"] = b64e(plain)
            except Exception as e:  # a body that does not decrypt is the sender's bug
                record["problem"] = f"decrypt: {e}"
        delay = 0.0
        with lock:
            status, headers = (201, [])
            if record["problem"]:
                status = 401 if "vapid" in record["problem"] or "signature" in record["problem"] else 400
            elif dev.get("down_until", 0) > time.time():
                status = 503
            elif dev["modes"]:
                mode = dev["modes"][0]
                status = mode[0]
                if mode[1]:
                    headers = [("Retry-After", mode[1])]
                delay = mode[3]
                mode[2] -= 1
                if mode[2] <= 0:
                    dev["modes"].pop(0)
            # Seen at once; "status" is null until the answer goes out.
            record["status"] = None
            dev["received"].append(record)
        time.sleep(delay)
        with lock:
            record["status"] = status
        self.reply(status, None, headers + ([("Location", f"/message/{len(dev['received'])}")] if status == 201 else []))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
