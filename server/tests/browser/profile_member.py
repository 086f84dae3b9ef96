"""A user on natter's generated Python bindings changes their profile: display name, status
and an uploaded avatar (server/tests/browser/profiles.rs watches another user's page).

Environment: NATTER_BINDINGS (folder with natter_ffi.py, natter_protocol.py and the
library), NATTER_ADDR, NATTER_FINGERPRINT, NATTER_USER, NATTER_PASSWORD, NATTER_AVATAR (an
image file), NATTER_NAME (the display name to set).

Prints {"avatar": "media:<id>", "displayName": ..., "userId": ...} once the server answered
both changes, then exits 0.
"""
import asyncio
import json
import os
import sys

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402
import natter_protocol as m  # noqa: E402


async def main():
    client = n.NatterClient(n.ConnectOptions(
        address=os.environ["NATTER_ADDR"], certificate_sha256=os.environ["NATTER_FINGERPRINT"],
        client_name="python-profile"))
    await client.login(os.environ["NATTER_USER"], os.environ["NATTER_PASSWORD"], "python")
    with open(os.environ["NATTER_AVATAR"], "rb") as f:
        image = f.read()
    p = await client.set_avatar("python.png", "image/png", image)
    assert p.avatar.startswith("media:"), p.avatar
    p = await client.set_profile(os.environ["NATTER_NAME"], None, "changed from Python")
    # A field refused by the server is a typed error, and changes nothing.
    try:
        await client.set_profile(None, "http://not-https.example/a.png", None)
        raise SystemExit("a plain-http avatar was accepted")
    except n.NatterError.Server as e:
        assert e.code == m.ErrorCode.BAD_REQUEST, e
    (again,) = await client.profiles([p.user_id])
    assert again.avatar == p.avatar and again.display_name == os.environ["NATTER_NAME"], again
    # Her data, as a link to a zip on the web endpoint (PROTOCOL.md §5.16).
    path = await client.export_account()
    assert path.startswith("/export/"), path
    print(json.dumps({"avatar": p.avatar, "displayName": p.display_name, "userId": p.user_id}), flush=True)
    await client.shutdown()


asyncio.run(main())
