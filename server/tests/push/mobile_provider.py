"""Apple's and Google's push services on loopback, the provider side done faithfully, for
natter's push tests (neither can be reached from here). One HTTPS server (Hypercorn: TLS
with ALPN, HTTP/2 and HTTP/1.1) plays:

- APNs: POST /3/device/<token> must come over HTTP/2 with a provider token (an ES256 JWT
  whose `kid` is the key id and `iss` the team id, signed by the team's key, `iat` under an
  hour old), `apns-topic` of the app, `apns-push-type: alert`, `apns-priority`,
  `apns-expiration` and an `apns-collapse-id` of at most 64 bytes, and a JSON body of at most
  4,096 bytes with `aps.alert` and `aps.mutable-content: 1`. Answers as Apple does
  (200; 400 BadDeviceToken; 403 InvalidProviderToken/ExpiredProviderToken; 410 Unregistered).
- Google's OAuth token endpoint: POST /token with an RS256 JWT assertion (RFC 7523) signed by
  the service account's key, `iss` its email, `aud` this endpoint, the firebase.messaging
  scope, at most an hour long; answers an access token.
- FCM HTTP v1: POST /v1/projects/<project>/messages:send with a bearer token from /token and
  a `message` naming a known registration token, whose `data` values are strings, at most
  4,096 bytes; answers `{"name"}`, or FCM's error JSON (404 UNREGISTERED, 401
  UNAUTHENTICATED, 429 QUOTA_EXCEEDED, 503 UNAVAILABLE).

The device side: GET /subscribe/<device>?provider=apns|fcm makes the device's P-256 key and
auth secret (as natter's SDK does on a phone) and a device token, and answers {"token",
"p256dh", "auth"}; every notification's `n` is decrypted here with the independent
`http_ece` (RFC 8291), as the phone's extension would.

POST /mode/<device>?status=410&retry_after=3&count=1&delay=0&big=0   answer the next `count`
     notifications so (`big`: with that many MiB of body)
POST /clear/<device>; GET /received/<device> (as webpush_provider.py); GET /stats ->
     {"oauth_tokens": n, "apns_tokens": [distinct provider tokens seen]}

Usage: mobile_provider.py CERT.pem KEY.pem OUTDIR — writes OUTDIR/apns.p8 and
OUTDIR/service-account.json, then prints "port <n>".
"""
import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
from urllib.parse import parse_qs

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypercorn.asyncio import serve
from hypercorn.config import Config

KEY_ID = "KEY1234567"
TEAM_ID = "TEAM123456"
TOPIC = "com.example.natter"
PROJECT = "natter-test"
EMAIL = "natter@natter-test.iam.gserviceaccount.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

devices = {}  # name -> {"provider", "token", "key", "auth", "received", "modes"}
by_token = {}  # device token -> name
access_tokens = {}  # token -> expiry
apns_tokens = set()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_parts(token):
    head_b64, claims_b64, sig_b64 = token.split(".")
    return head_b64, claims_b64, json.loads(b64d(head_b64)), json.loads(b64d(claims_b64)), b64d(sig_b64)


def check_apns_jwt(auth):
    """None, or the APNs reason a provider token is refused with."""
    if not auth.lower().startswith("bearer "):  # the scheme is case-insensitive (RFC 9110)
        return "MissingProviderToken"
    try:
        hb, cb, head, claims, sig = jwt_parts(auth[7:])
    except Exception:
        return "InvalidProviderToken"
    if head.get("alg") != "ES256" or head.get("kid") != KEY_ID or claims.get("iss") != TEAM_ID or len(sig) != 64:
        return "InvalidProviderToken"
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        team_key.public_key().verify(der, f"{hb}.{cb}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "InvalidProviderToken"
    iat = claims.get("iat", 0)
    if iat > time.time() + 60:
        return "InvalidProviderToken"
    if iat < time.time() - 3600:
        return "ExpiredProviderToken"
    apns_tokens.add(auth[7:])
    return None


def check_assertion(assertion, token_uri):
    """None, or why an OAuth assertion is refused."""
    try:
        hb, cb, head, claims, sig = jwt_parts(assertion)
    except Exception:
        return "malformed"
    if head.get("alg") != "RS256":
        return "alg must be RS256"
    try:
        sa_key.public_key().verify(sig, f"{hb}.{cb}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "bad signature"
    now = time.time()
    if claims.get("iss") != EMAIL or claims.get("aud") != token_uri:
        return "iss/aud"
    if SCOPE not in str(claims.get("scope", "")).split():
        return "scope"
    if not (now - 60 <= claims.get("iat", 0) <= now + 60) or not (now < claims.get("exp", 0) <= claims["iat"] + 3600):
        return "iat/exp"
    return None


def open_body(dev, n):
    plain = http_ece.decrypt(base64.b64decode(n), private_key=dev["key"], auth_secret=dev["auth"], version="aes128gcm")
    return b64e(plain)


APNS_REASONS = {400: "BadRequest", 403: "Forbidden", 410: "Unregistered", 413: "PayloadTooLarge",
                429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
FCM_STATUS = {400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), 401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
              403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH"), 404: ("NOT_FOUND", "UNREGISTERED"),
              410: ("NOT_FOUND", "UNREGISTERED"), 429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
              500: ("INTERNAL", "INTERNAL"), 503: ("UNAVAILABLE", "UNAVAILABLE")}


def fcm_error(status):
    name, code = FCM_STATUS.get(status, ("UNKNOWN", "UNSPECIFIED_ERROR"))
    return {"error": {"code": status, "message": code, "status": name, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    path, method = scope["path"], scope["method"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}

    async def reply(status, obj=None, extra=(), big_mib=0):
        data = json.dumps(obj).encode() if obj is not None else b""
        hs = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in extra]
        await send({"type": "http.response.start", "status": status, "headers": hs})
        if big_mib:
            chunk = b" " * (1 << 20)
            for _ in range(big_mib):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": data})

    parts = path.strip("/").split("/")
    if method == "GET" and parts[0] == "subscribe":
        provider = query.get("provider", "apns")
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        token = os.urandom(32).hex() if provider == "apns" else "fcm:" + b64e(os.urandom(40)).replace("-", "_")
        devices[parts[1]] = {"provider": provider, "token": token, "key": key, "auth": auth,
                             "received": [], "modes": []}
        by_token[token] = parts[1]
        public = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        return await reply(200, {"token": token, "p256dh": b64e(public), "auth": b64e(auth)})
    if method == "GET" and parts[0] == "received":
        return await reply(200, devices.get(parts[1], {}).get("received", []))
    if method == "GET" and parts[0] == "stats":
        return await reply(200, {"oauth_tokens": len(access_tokens), "apns_tokens": sorted(apns_tokens)})
    if method == "POST" and parts[0] == "clear":
        devices[parts[1]]["modes"].clear()
        return await reply(200, {})
    if method == "POST" and parts[0] == "mode":
        devices[parts[1]]["modes"].append([int(query["status"]), query.get("retry_after"),
                                           int(query.get("count", "1")), float(query.get("delay", "0")),
                                           int(query.get("big", "0"))])
        return await reply(200, {})
    if method == "POST" and path == "/token":
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        why = "grant_type" if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" else \
            check_assertion(form.get("assertion", ""), token_uri)
        if why:
            return await reply(400, {"error": "invalid_grant", "error_description": why})
        tok = "ya29." + b64e(os.urandom(24))
        access_tokens[tok] = time.time() + 3599
        return await reply(200, {"access_token": tok, "expires_in": 3599, "token_type": "Bearer"})

    # A notification, to APNs or FCM.
    if method == "POST" and parts[0] == "3" and len(parts) == 3 and parts[1] == "device":
        provider, token = "apns", parts[2]
    elif method == "POST" and path == f"/v1/projects/{PROJECT}/messages:send":
        provider = "fcm"
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or access_tokens.get(auth[7:], 0) < time.time():
            return await reply(401, fcm_error(401))
        try:
            token = json.loads(body)["message"]["token"]
        except Exception:
            return await reply(400, fcm_error(400))
    else:
        return await reply(404, {})
    name = by_token.get(token)
    if name is None:
        return await reply(400, {"reason": "BadDeviceToken"}) if provider == "apns" else \
            await reply(404, fcm_error(404))
    dev = devices[name]
    record = {"at": time.time(), "http": scope["http_version"], "problem": None, "status": None,
              "topic": None, "urgency": None}
    problem = None
    if provider == "apns":
        reason = check_apns_jwt(headers.get("authorization", ""))
        if reason:
            return await reply(403, {"reason": reason})
        record["topic"] = headers.get("apns-collapse-id")
        record["urgency"] = headers.get("apns-priority")
        if scope["http_version"] != "2":
            problem = "APNs takes HTTP/2 only"
        elif headers.get("apns-topic") != TOPIC:
            problem = "apns-topic"
        elif (headers.get("apns-push-type"), headers.get("apns-priority")) not in (
                ("alert", "10"), ("alert", "5"), ("background", "5")):
            problem = "apns-push-type/apns-priority (a background push must have priority 5)"
        elif not headers.get("apns-expiration", "").isdigit():
            problem = "apns-expiration"
        elif len(headers.get("apns-collapse-id", "").encode()) > 64:
            problem = "apns-collapse-id over 64 bytes"
        elif len(body) > 4096:
            problem = "PayloadTooLarge"
        else:
            try:
                doc = json.loads(body)
                aps = doc["aps"]
                if headers["apns-push-type"] == "background":
                    if aps.get("content-available") != 1 or "alert" in aps:
                        problem = "a background push has content-available and no alert"
                elif aps.get("mutable-content") != 1 or "alert" not in aps:
                    problem = "aps needs alert and mutable-content"
                record["push_type"] = headers["apns-push-type"]
                n = doc["n"]
            except Exception as e:
                problem = f"body: {e}"
    else:
        msg = json.loads(body)["message"]
        record["topic"] = msg.get("android", {}).get("collapse_key")
        record["urgency"] = msg.get("android", {}).get("priority")
        data = msg.get("data", {})
        if len(body) > 4096:
            problem = "message too big"
        elif not all(isinstance(v, str) for v in data.values()):
            problem = "data values must be strings"
        elif not re.fullmatch(r"\d+(\.\d+)?s", msg.get("android", {}).get("ttl", "0s")):
            problem = "android.ttl"
        n = data.get("n")
    if problem is None:
        try:
            record["length"] = len(base64.b64decode(n))
            record["payload"] = open_body(dev, n)
        except Exception as e:
            problem = f"decrypt: {e}"
    record["problem"] = problem
    status, extra, delay, big = 200, [], 0.0, 0
    if problem:
        status = 400
    elif dev["modes"]:
        mode = dev["modes"][0]
        status, delay, big = mode[0], mode[3], mode[4]
        if mode[1]:
            extra = [("retry-after", mode[1])]
        mode[2] -= 1
        if mode[2] <= 0:
            dev["modes"].pop(0)
    dev["received"].append(record)
    await asyncio.sleep(delay)
    record["status"] = status
    if status == 200:
        return await reply(200, {} if provider == "apns" else {"name": f"projects/{PROJECT}/messages/{len(dev['received'])}"},
                           [("apns-id", "00000000-0000-0000-0000-000000000001")] if provider == "apns" else [])
    if provider == "apns":
        obj = {"reason": problem or APNS_REASONS.get(status, "InternalServerError")}
        if status == 410:
            obj["timestamp"] = int(time.time() * 1000)
    else:
        obj = fcm_error(status)
    await reply(status, obj, extra, big)


cert, key, out = sys.argv[1:4]
team_key = ec.generate_private_key(ec.SECP256R1())
sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
port = sock.getsockname()[1]
token_uri = f"https://127.0.0.1:{port}/token"
pkcs8 = serialization.PrivateFormat.PKCS8
with open(os.path.join(out, "apns.p8"), "wb") as f:
    f.write(team_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
with open(os.path.join(out, "service-account.json"), "w") as f:
    json.dump({"type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
               "private_key": sa_key.private_bytes(serialization.Encoding.PEM, pkcs8,
                                                   serialization.NoEncryption()).decode(),
               "client_email": EMAIL, "token_uri": token_uri}, f)
config = Config()
config.bind = [f"fd://{sock.fileno()}"]
config.certfile, config.keyfile = cert, key
config.alpn_protocols = ["h2", "http/1.1"]
config.accesslog = config.errorlog = None
config.loglevel = "ERROR"
print(f"port {port}", flush=True)
asyncio.run(serve(app, config))
