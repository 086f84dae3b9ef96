#!/usr/bin/env python3
"""Writes docs/CONFIG.md from the doc comments of the configuration structs and the defaults
natter-server prints. Run from the repository root after adding or changing a key:
    cargo run -q -p natter-server -- config --print-defaults > /tmp/defaults.toml
    python3 scripts/gen-config-doc.py /tmp/defaults.toml > docs/CONFIG.md
(config.rs's test `every_key_is_in_the_configuration_reference` fails until then.)"""
import re, sys, tomllib
defaults = tomllib.loads(open(sys.argv[1]).read())
def parse(path, name):
    src = open(path).read()
    m = re.search(r'pub struct %s \{(.*?)\n\}' % name, src, re.S)
    out, doc = [], []
    for line in m.group(1).split('\n'):
        t = line.strip()
        if t.startswith('///'):
            doc.append(t[3:].strip())
        elif t.startswith('pub '):
            n, ty = t[4:].split(':', 1)
            out.append((n.strip(), ty.strip().rstrip(','), ' '.join(doc)))
            doc = []
        elif not t.startswith('#['):
            doc = []
    return out
LIVE = {'tls_cert', 'tls_key', 'rates', 'log', 'retention'}
def fmt(v):
    if isinstance(v, dict):
        return '(table)'
    if isinstance(v, list):
        return '`[]`' if not v else '`%s`' % v
    if isinstance(v, bool):
        return '`%s`' % str(v).lower()
    if isinstance(v, str):
        return '`"%s"`' % v
    return '`%s`' % v
rows = []
for n, ty, doc in parse('server/src/config.rs', 'Config'):
    d = fmt(defaults[n]) if n in defaults else 'unset'
    live = 'yes' if n in LIVE else ''
    rows.append('| `%s` | %s | %s | %s |' % (n, d, live, doc.replace('|', '\\|')))
def table(path, struct, key):
    return ['| `%s` | %s | %s |' % (n, fmt(defaults[key][n]), doc.replace('|', '\\|'))
            for n, ty, doc in parse(path, struct)]
rrows = table('server/src/security/ratelimit.rs', 'RateConfig', 'rates')
trows = table('server/src/conversation/retention.rs', 'RetentionSettings', 'retention')
print('''# Configuration reference

Every key natter-server reads, with its default and what it does. The server reads a TOML
file (`--config natter.toml`, or `NATTER_CONFIG`), then flags and `NATTER_*` environment
variables on top (`natter-server --help` lists those). Every key has a default:
`natter-server config --print-defaults` prints them all as TOML (keys that are unset by
default, such as `tls_cert`, are not printed); `natter-server config` prints what this
command line and file would run with. A unit test (`config.rs`) fails when a key is missing
here.

**Live** keys change on SIGHUP (the node reads the file again): the TLS certificate and key
(new connections get the new certificate; connections already made keep theirs), the rate
limits, the log filter and retention. Every other key that changed is named in the log line
`configuration reloaded … need_restart=[…]` and takes effect at the next start. A file that
does not load, or a certificate that does not, changes nothing.

| key | default | live | meaning |
|---|---|---|---|''')
print('\n'.join(rows))
print('''
## `[rates]`

| key | default | meaning |
|---|---|---|''')
print('\n'.join(rrows))
print('''
## `[retention]`

How long conversations keep their events (PROTOCOL.md §5.17): a conversation's own setting
(`SetRetention`) wins over its kind's default here.

| key | default | meaning |
|---|---|---|''')
print('\n'.join(trows))
print('''
Nested tables (`[apns]`, `[fcm]`, `[email]`, `[s3]`, `[webhooks]`, `[presend_hook]`,
`[[token_issuers]]`) are described where their features are: README "Notifications",
"Media", "Server API".''')
