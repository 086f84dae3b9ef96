"""A product's backend, as the token-login tests need one: it mints JWTs for its users
with PyJWT — HS256 with a shared secret, RS256 with a key whose public half natter reads
from a PEM file, ES256 and EdDSA with keys it publishes as a JWKS — and can rotate in a
new JWKS key while running.

    product.py <dir>

writes <dir>/rs256.pem and <dir>/hs256.secret, serves on a loopback port and prints
"port <n>". GET /jwks.json: the key set. GET /token?sub=&alg=&exp_in=&aud=&iss=&kid=&name=
&preferred_username=&nbf_in=&sign_with=other: a token. POST /rotate: a new ES256 key
(kid es-2) joins the set; its tokens use kid=es-2.
"""
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

out = sys.argv[1]
SECRET = secrets.token_hex(32)
with open(f"{out}/hs256.secret", "w") as f:
    f.write(SECRET)
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
with open(f"{out}/rs256.pem", "wb") as f:
    f.write(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
# kid -> (alg, private key)
jwks_keys = {
    "es-1": ("ES256", ec.generate_private_key(ec.SECP256R1())),
    "ed-1": ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
}


def public_jwk(kid, alg, key):
    if alg == "ES256":
        d = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    else:
        d = json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    d.update(kid=kid, alg=alg, use="sig")
    return d


def mint(q):
    alg = q.get("alg", "HS256")
    now = int(time.time())
    claims = {
        "iss": q.get("iss", "https://product.test"),
        "aud": q.get("aud", "natter"),
        "sub": q["sub"],
        "exp": now + int(q.get("exp_in", "600")),
        "iat": now,
    }
    for k in ("name", "preferred_username", "picture"):
        if k in q:
            claims[k] = q[k]
    if "nbf_in" in q:
        claims["nbf"] = now + int(q["nbf_in"])
    other = q.get("sign_with") == "other"
    if alg == "HS256":
        return jwt.encode(claims, "x" * 64 if other else SECRET, algorithm="HS256")
    if alg == "RS256":
        return jwt.encode(claims, other_rsa if other else rsa_key, algorithm="RS256")
    kid = q.get("kid", "es-1" if alg == "ES256" else "ed-1")
    key = jwks_keys[kid][1]
    if other:
        key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/jwks.json":
            keys = [public_jwk(kid, alg, key) for kid, (alg, key) in jwks_keys.items()]
            self.reply(200, json.dumps({"keys": keys}))
        elif u.path == "/token":
            self.reply(200, mint(q), "text/plain")
        else:
            self.reply(404, "{}")

    def do_POST(self):
        if urlparse(self.path).path == "/rotate":
            jwks_keys["es-2"] = ("ES256", ec.generate_private_key(ec.SECP256R1()))
            self.reply(200, "{}")
        else:
            self.reply(404, "{}")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
