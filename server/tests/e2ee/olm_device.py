#!/usr/bin/env python3
"""An independent natter device for server/tests/e2ee.rs, from PROTOCOL.md §12 alone:
libolm (Debian's python3-olm) for Olm and libsodium (python3-nacl) for the content AEAD,
no natter code.

  olm_device.py keys USER DEVICE    make an account; print its identity, one-time keys and
                                    signatures (PROTOCOL.md §12.1) and its pickle, as JSON
  olm_device.py open                read {pickle, sender_key, olm_type, olm_body,
                                    conversation_id, sender_user_id, sender_device_id,
                                    client_msg_id, nonce, ciphertext} (bytes as hex) on
                                    stdin; print the message's text (§12.4, §12.6)
"""
import base64
import json
import struct
import sys

import nacl.bindings
import olm

PASSPHRASE = "natter-test"


def b64(b):
    return base64.b64encode(b).decode().rstrip("=")


def unb64(s):
    return base64.b64decode(s + "=" * (-len(s) % 4))


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf):
    """A protobuf message's fields: {number: [value, ...]} (varints as int, the rest bytes)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def keys(user, device):
    account = olm.Account()
    ids = account.identity_keys
    ed, curve = unb64(ids["ed25519"]), unb64(ids["curve25519"])
    ids_be = struct.pack(">QQ", user, device)
    signature = unb64(account.sign(b"natter-device-keys-v1" + ids_be + ed + curve))
    account.generate_one_time_keys(5)
    otks = []
    for key in account.one_time_keys["curve25519"].values():
        raw = unb64(key)
        sig = unb64(account.sign(b"natter-one-time-key-v1" + ids_be + raw))
        otks.append({"public_key": raw.hex(), "signature": sig.hex()})
    account.mark_keys_as_published()
    print(json.dumps({
        "ed25519": ed.hex(),
        "curve25519": curve.hex(),
        "signature": signature.hex(),
        "one_time_keys": otks,
        "pickle": account.pickle(PASSPHRASE).decode(),
    }))


def open_message():
    m = json.load(sys.stdin)
    account = olm.Account.from_pickle(m["pickle"].encode(), PASSPHRASE)
    body = b64(bytes.fromhex(m["olm_body"]))
    assert m["olm_type"] == 0, "a first message is a pre-key message"
    message = olm.OlmPreKeyMessage(body)
    sender = b64(bytes.fromhex(m["sender_key"]))
    session = olm.InboundSession(account, message, sender)
    grant = session.decrypt(message, unicode_errors="surrogateescape").encode("utf-8", "surrogateescape")
    g = fields(grant)
    key = g[1][0]
    assert g[2][0] == m["conversation_id"], "the grant names this conversation"
    assert g[3][0].decode() == m["client_msg_id"], "and this message"
    assert g[5][0] == unb64(account.identity_keys["ed25519"]), "and this device"
    aad = (b"natter-e2ee-v1" + struct.pack(">QQQ", m["conversation_id"], m["sender_user_id"], m["sender_device_id"])
           + m["client_msg_id"].encode())
    padded = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        bytes.fromhex(m["ciphertext"]), aad, bytes.fromhex(m["nonce"]), key)
    (n,) = struct.unpack(">I", padded[:4])
    bucket = max(256, 1 << (n + 4 - 1).bit_length())
    assert len(padded) == bucket and not any(padded[4 + n:]), "padded to its bucket with zeros"
    sealed = fields(padded[4 : 4 + n])
    message_body = fields(sealed[1][0])
    print(json.dumps({"text": message_body[2][0].decode()}))


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(int(sys.argv[2]), int(sys.argv[3]))
    else:
        open_message()
