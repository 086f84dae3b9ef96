"""Uploads a file to natter's tus endpoint with tuspy (PyPI), interrupted once: the first
uploader stores one chunk and stops; a second uploader with the first one's URL asks the
server for its offset (HEAD) and finishes from there.
Usage: python tus_py.py <endpoint> <access token> <conversation id> <file> <chunk bytes>
Prints one JSON line: { url, firstOffset, resumedFrom }."""
import json
import sys

from tusclient import client

endpoint, token, conversation, path, chunk = sys.argv[1:6]
c = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
meta = {"conversation": conversation, "filename": "tuspy.bin", "filetype": "application/octet-stream"}
with open(path, "rb") as f:
    first = c.uploader(file_stream=f, chunk_size=int(chunk), metadata=meta, retries=0)
    first.upload_chunk()
    url, first_offset = first.url, first.offset
with open(path, "rb") as f:
    second = c.uploader(file_stream=f, url=url, chunk_size=int(chunk), metadata=meta, retries=0)
    resumed_from = second.offset
    second.upload()
print(json.dumps({"url": url, "firstOffset": first_offset, "resumedFrom": resumed_from}))
