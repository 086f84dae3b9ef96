//! The device's own search index of what it decrypted (PROTOCOL.md §14.5): the server
//! cannot read encrypted conversations, so each device indexes the messages it opened, with
//! the same terms and queries as the server (`crate::search`), and says how far back each
//! conversation is indexed instead of silently finding nothing. Sans-IO and in memory, the
//! same on native, mobile and wasm; the SDK feeds it opened events (live, history pages,
//! a budgeted backfill) and stores it sealed with its store key ([`LocalIndex::seal`]).
//!
//! Postings map each term to the messages holding it; a query takes the candidates of its
//! rarest phrase and confirms every clause on the message's own terms, so it finds exactly
//! what [`crate::search::text_matches`] says. A budget bounds what is kept: past it, the
//! oldest messages are dropped and the coverage says so.
use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::search::{matches, terms, Has, Phrase, Query};

/// Messages kept unless configured otherwise.
pub const DEFAULT_MAX_MESSAGES: usize = 100_000;
/// Bytes of text kept unless configured otherwise.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 32 << 20;
const FORMAT: u8 = 1;
const AAD: &[u8] = b"natter local search index v1";

/// (conversation, seq): one message.
type Key = (u64, u64);

/// One message as the local index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDoc {
    /// Commit time, ms since the epoch.
    pub time_ms: u64,
    /// Who sent it.
    pub sender: u64,
    /// Their username (for `from:`).
    pub sender_name: String,
    /// Its text (as last edited).
    pub text: String,
    /// Its attachments' names.
    pub names: Vec<String>,
    /// What it has (`has:`).
    pub has: Vec<Has>,
}

impl LocalDoc {
    fn indexed_text(&self) -> String {
        crate::search::indexed_text(&self.text, &self.names)
    }

    fn bytes(&self) -> usize {
        self.text.len() + self.names.iter().map(String::len).sum::<usize>() + self.sender_name.len() + 32
    }
}

/// How much of one conversation the device has looked at: every event from `from_seq` to
/// `to_seq` went through the index (messages in it are searchable). `from_seq` 1 means
/// the whole conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Coverage {
    /// The oldest event seen (1: from the start).
    pub from_seq: u64,
    /// The newest event seen.
    pub to_seq: u64,
}

impl Coverage {
    /// Whether the whole history up to `to_seq` is indexed.
    pub fn complete(&self) -> bool {
        self.from_seq <= 1
    }
}

/// One local hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHit {
    /// Where.
    pub conversation: u64,
    /// The message's seq.
    pub seq: u64,
    /// Its commit time.
    pub time_ms: u64,
}

/// A local query: the parsed query and the filters the caller adds.
#[derive(Clone, Debug, Default)]
pub struct LocalRequest<'a> {
    /// The parsed query (`None`: every message in scope).
    pub query: Option<&'a Query>,
    /// Only these conversations (empty: none).
    pub conversations: &'a [u64],
    /// Only from these users (empty: anyone); `from:` names in the query apply too.
    pub senders: &'a [u64],
    /// Sent at or after (ms since the epoch).
    pub after_ms: Option<u64>,
    /// Sent before.
    pub before_ms: Option<u64>,
    /// Most hits.
    pub limit: usize,
}

/// Why a sealed index did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalIndexError {
    /// Another key, or the bytes were changed.
    #[error("the local search index does not open with this key")]
    Key,
    /// It opened but does not read as an index.
    #[error("the local search index is malformed: {0}")]
    Malformed(&'static str),
}

/// The index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIndex {
    docs: BTreeMap<Key, LocalDoc>,
    postings: BTreeMap<String, BTreeSet<Key>>,
    /// Messages by time: the oldest go first when over budget.
    by_time: BTreeSet<(u64, Key)>,
    coverage: BTreeMap<u64, Coverage>,
    text_bytes: usize,
    max_messages: usize,
    max_text_bytes: usize,
}

impl Default for LocalIndex {
    fn default() -> Self {
        LocalIndex::new(DEFAULT_MAX_MESSAGES, DEFAULT_MAX_TEXT_BYTES)
    }
}

impl LocalIndex {
    /// An empty index keeping at most `max_messages` messages and `max_text_bytes` of text.
    pub fn new(max_messages: usize, max_text_bytes: usize) -> Self {
        LocalIndex {
            docs: BTreeMap::new(),
            postings: BTreeMap::new(),
            by_time: BTreeSet::new(),
            coverage: BTreeMap::new(),
            text_bytes: 0,
            max_messages: max_messages.max(1),
            max_text_bytes: max_text_bytes.max(1),
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// How much of `conversation` has been looked at.
    pub fn coverage(&self, conversation: u64) -> Option<Coverage> {
        self.coverage.get(&conversation).copied()
    }

    /// An event of `conversation` at `seq` went through the index (message or not).
    pub fn observe(&mut self, conversation: u64, seq: u64) {
        let c = self.coverage.entry(conversation).or_insert(Coverage {
            from_seq: seq,
            to_seq: seq,
        });
        c.from_seq = c.from_seq.min(seq);
        c.to_seq = c.to_seq.max(seq);
    }

    /// Index a message (or replace it).
    pub fn put(&mut self, conversation: u64, seq: u64, doc: LocalDoc) {
        self.observe(conversation, seq);
        self.remove(conversation, seq);
        let key = (conversation, seq);
        for t in terms(&doc.indexed_text()) {
            self.postings.entry(t.text).or_default().insert(key);
        }
        self.text_bytes += doc.bytes();
        self.by_time.insert((doc.time_ms, key));
        self.docs.insert(key, doc);
        self.enforce_budget();
    }

    /// A message's text was edited.
    pub fn edit(&mut self, conversation: u64, seq: u64, text: &str) {
        if let Some(mut doc) = self.docs.get(&(conversation, seq)).cloned() {
            doc.text = text.to_string();
            self.put(conversation, seq, doc);
        }
    }

    /// A message was deleted.
    pub fn remove(&mut self, conversation: u64, seq: u64) {
        let key = (conversation, seq);
        if let Some(doc) = self.docs.remove(&key) {
            self.text_bytes -= doc.bytes();
            self.by_time.remove(&(doc.time_ms, key));
            for t in terms(&doc.indexed_text()) {
                if let Some(p) = self.postings.get_mut(&t.text) {
                    p.remove(&key);
                    if p.is_empty() {
                        self.postings.remove(&t.text);
                    }
                }
            }
        }
    }

    /// A conversation was deleted or left: forget it.
    pub fn remove_conversation(&mut self, conversation: u64) {
        let keys: Vec<Key> = self
            .docs
            .range((conversation, 0)..=(conversation, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for (c, s) in keys {
            self.remove(c, s);
        }
        self.coverage.remove(&conversation);
    }

    /// Past the budget: drop the oldest messages; their conversations' coverage starts
    /// after them.
    fn enforce_budget(&mut self) {
        while self.docs.len() > self.max_messages || self.text_bytes > self.max_text_bytes {
            let Some(&(_, (c, s))) = self.by_time.first() else {
                return;
            };
            self.remove(c, s);
            if let Some(cov) = self.coverage.get_mut(&c) {
                cov.from_seq = cov.from_seq.max(s + 1);
            }
        }
    }

    /// Messages that may match `p` (a superset; confirmed on each message's terms).
    fn candidates(&self, p: &Phrase) -> BTreeSet<Key> {
        let mut out = BTreeSet::new();
        if let Some(w) = &p.whole {
            if let Some(ks) = self.postings.get(w) {
                out.extend(ks.iter().copied());
            }
        }
        let Some(first) = p.parts.first() else { return out };
        if p.prefix && p.parts.len() == 1 {
            for (_, ks) in self
                .postings
                .range(first.clone()..)
                .take_while(|(t, _)| t.starts_with(first.as_str()))
            {
                out.extend(ks.iter().copied());
            }
        } else if let Some(ks) = self.postings.get(first) {
            out.extend(ks.iter().copied());
        }
        out
    }

    /// The hits of `req`, newest first (time, then seq), at most `limit`, and how many
    /// matched in all.
    pub fn search(&self, req: &LocalRequest<'_>) -> (Vec<LocalHit>, usize) {
        let scope: BTreeSet<u64> = req.conversations.iter().copied().collect();
        let from: Vec<String> = req
            .query
            .map(|q| {
                q.from
                    .iter()
                    .map(|n| crate::search::fold(n.trim_start_matches('@')))
                    .collect()
            })
            .unwrap_or_default();
        let keep = |k: &Key, d: &LocalDoc| -> bool {
            if !scope.contains(&k.0) {
                return false;
            }
            if !req.senders.is_empty() && !req.senders.contains(&d.sender) {
                return false;
            }
            if !from.is_empty() && !from.contains(&crate::search::fold(&d.sender_name)) {
                return false;
            }
            if req.after_ms.is_some_and(|a| d.time_ms < a) || req.before_ms.is_some_and(|b| d.time_ms >= b) {
                return false;
            }
            let Some(q) = req.query else { return true };
            if !q.has.iter().all(|h| d.has.contains(h)) {
                return false;
            }
            let ts = terms(&d.indexed_text());
            q.must.iter().all(|p| matches(&ts, p)) && !q.exclude.iter().any(|p| matches(&ts, p))
        };
        // The rarest phrase's candidates, or every message in scope for a filter-only query.
        let candidates: Vec<Key> = match req.query.map(|q| &q.must) {
            Some(must) if !must.is_empty() => must
                .iter()
                .map(|p| self.candidates(p))
                .min_by_key(BTreeSet::len)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            _ => scope
                .iter()
                .flat_map(|c| self.docs.range((*c, 0)..=(*c, u64::MAX)).map(|(k, _)| *k))
                .collect(),
        };
        let mut hits: Vec<LocalHit> = candidates
            .into_iter()
            .filter_map(|k| {
                let d = self.docs.get(&k)?;
                keep(&k, d).then_some(LocalHit {
                    conversation: k.0,
                    seq: k.1,
                    time_ms: d.time_ms,
                })
            })
            .collect();
        hits.sort_by_key(|h| std::cmp::Reverse((h.time_ms, h.seq, h.conversation)));
        let total = hits.len();
        hits.truncate(req.limit);
        (hits, total)
    }

    /// One message as indexed.
    pub fn doc(&self, conversation: u64, seq: u64) -> Option<&LocalDoc> {
        self.docs.get(&(conversation, seq))
    }

    /// The index as bytes, sealed with `key` (XChaCha20-Poly1305, the caller's random
    /// 24-byte `nonce` in front): what the SDK writes to its store.
    pub fn seal(&self, key: &[u8; 32], nonce: [u8; 24]) -> Vec<u8> {
        let plain = self.encode();
        let aead = XChaCha20Poly1305::new(key.into());
        let sealed = aead
            .encrypt(&nonce.into(), Payload { msg: &plain, aad: AAD })
            .expect("XChaCha20-Poly1305 seals any length this index has");
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Open what [`LocalIndex::seal`] made, with the budget `max_messages`/`max_text_bytes`.
    pub fn open(
        bytes: &[u8],
        key: &[u8; 32],
        max_messages: usize,
        max_text_bytes: usize,
    ) -> Result<Self, LocalIndexError> {
        if bytes.len() < 24 {
            return Err(LocalIndexError::Malformed("too short"));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().expect("24 bytes");
        let aead = XChaCha20Poly1305::new(key.into());
        let plain = aead
            .decrypt(&nonce.into(), Payload { msg: sealed, aad: AAD })
            .map_err(|_| LocalIndexError::Key)?;
        let mut index = LocalIndex::new(max_messages, max_text_bytes);
        index.decode(&plain)?;
        index.enforce_budget();
        Ok(index)
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.text_bytes + self.docs.len() * 48);
        let s = |b: &mut Vec<u8>, v: &str| {
            b.put_u32(v.len() as u32);
            b.put_slice(v.as_bytes());
        };
        b.put_u8(FORMAT);
        b.put_u32(self.coverage.len() as u32);
        for (c, cov) in &self.coverage {
            b.put_u64(*c);
            b.put_u64(cov.from_seq);
            b.put_u64(cov.to_seq);
        }
        b.put_u32(self.docs.len() as u32);
        for ((c, seq), d) in &self.docs {
            b.put_u64(*c);
            b.put_u64(*seq);
            b.put_u64(d.time_ms);
            b.put_u64(d.sender);
            s(&mut b, &d.sender_name);
            s(&mut b, &d.text);
            b.put_u32(d.names.len() as u32);
            for n in &d.names {
                s(&mut b, n);
            }
            b.put_u8(d.has.iter().fold(0, |m, h| m | has_bit(*h)));
        }
        b
    }

    fn decode(&mut self, mut b: &[u8]) -> Result<(), LocalIndexError> {
        fn need(b: &[u8], n: usize) -> Result<(), LocalIndexError> {
            if b.remaining() < n {
                Err(LocalIndexError::Malformed("truncated"))
            } else {
                Ok(())
            }
        }
        fn string(b: &mut &[u8]) -> Result<String, LocalIndexError> {
            need(b, 4)?;
            let n = b.get_u32() as usize;
            need(b, n)?;
            let s = String::from_utf8(b[..n].to_vec()).map_err(|_| LocalIndexError::Malformed("not UTF-8"))?;
            b.advance(n);
            Ok(s)
        }
        need(b, 5)?;
        if b.get_u8() != FORMAT {
            return Err(LocalIndexError::Malformed("unknown format"));
        }
        let covs = b.get_u32();
        for _ in 0..covs {
            need(b, 24)?;
            let (c, from_seq, to_seq) = (b.get_u64(), b.get_u64(), b.get_u64());
            self.coverage.insert(c, Coverage { from_seq, to_seq });
        }
        need(b, 4)?;
        let docs = b.get_u32();
        for _ in 0..docs {
            need(b, 32)?;
            let (c, seq, time_ms, sender) = (b.get_u64(), b.get_u64(), b.get_u64(), b.get_u64());
            let sender_name = string(&mut b)?;
            let text = string(&mut b)?;
            need(b, 4)?;
            let n = b.get_u32();
            let mut names = Vec::new();
            for _ in 0..n {
                names.push(string(&mut b)?);
            }
            need(b, 1)?;
            let bits = b.get_u8();
            let has = [Has::File, Has::Image, Has::Link]
                .into_iter()
                .filter(|h| bits & has_bit(*h) != 0)
                .collect();
            let cov = self.coverage.get(&c).copied();
            self.put(
                c,
                seq,
                LocalDoc {
                    time_ms,
                    sender,
                    sender_name,
                    text,
                    names,
                    has,
                },
            );
            // Putting observes; the stored coverage is the truth.
            if let Some(cov) = cov {
                self.coverage.insert(c, cov);
            }
        }
        if b.has_remaining() {
            return Err(LocalIndexError::Malformed("trailing bytes"));
        }
        Ok(())
    }
}

fn has_bit(h: Has) -> u8 {
    match h {
        Has::File => 1,
        Has::Image => 2,
        Has::Link => 4,
    }
}

#[cfg(test)]
#[path = "local_search_tests.rs"]
mod tests;
