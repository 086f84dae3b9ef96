//! Search text (PROTOCOL.md §14): how a message's text becomes terms, and what a query
//! asks for. One definition for the server's index and every device's local index (the
//! browser's too), so the same words find the same messages everywhere.
//!
//! **Terms.** Text is folded character by character: lower case, compatibility forms
//! (full-width `Ｃ` is `c`), Latin, Greek and Cyrillic diacritics removed (`é` is `e`, `ё`
//! is `е`), `ß` is `ss`, and a few letters without a decomposition (`ø`, `ł`, `æ`, `œ`,
//! `đ`, `þ`, `ı`) spelled out. Nothing is stemmed and no stop word is dropped, so "to be or
//! not to be" is six terms. Each whitespace-separated chunk (surrounding punctuation
//! trimmed) gives its **parts** — runs of letters and digits — at consecutive positions,
//! and, if it has punctuation inside (`foo.png`, `C++20`, a URL, a path), the chunk
//! **whole** as one more term at its first part's position. Runs of Han, Hiragana and
//! Katakana give overlapping character bigrams (a lone character gives itself), so
//! Japanese and Chinese are found without a dictionary.
//!
//! **Queries** (`parse`): words, `"quoted phrases"`, `-excluded` words or phrases, filters
//! (`from:`, `in:`, `has:file|image|link`, `before:` and `after:` dates), and the last bare
//! word matches as a prefix (search as you type). A word matches its whole term or its
//! parts as a phrase. A single CJK character matches the bigrams it starts. Limits keep a query's work bounded: [`MAX_QUERY_CHARS`],
//! [`MAX_CLAUSES`], [`MIN_PREFIX_CHARS`].
use std::ops::Range;

use unicode_normalization::UnicodeNormalization;

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// Most words, phrases and filters in a query.
pub const MAX_CLAUSES: usize = 32;
/// Most parts in one phrase.
pub const MAX_PHRASE_PARTS: usize = 16;
/// A prefix shorter than this (in characters) matches only whole terms.
pub const MIN_PREFIX_CHARS: usize = 2;
/// Longest part indexed, in bytes (longer runs are noise: hashes, base64).
pub const MAX_PART_BYTES: usize = 64;
/// Longest chunk indexed whole, in bytes.
pub const MAX_WHOLE_BYTES: usize = 256;

/// One term of a text: its folded form, its position (parts count up; a whole chunk shares
/// its first part's position) and where it came from in the original text (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The folded term.
    pub text: String,
    /// Its position (phrases match consecutive positions).
    pub position: u32,
    /// The bytes of the original text it came from.
    pub span: Range<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// Letters and digits of scripts that separate words with spaces.
    Word,
    /// Han, Hiragana, Katakana: indexed as bigrams.
    Cjk,
    /// Everything else: punctuation, symbols, marks on their own.
    Other,
}

fn class(c: char) -> Class {
    let u = c as u32;
    let cjk = matches!(u,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x3FFFF); // CJK extensions B–H
    if cjk {
        Class::Cjk
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Other
    }
}

/// `c` folded (lower case, compatibility form, no Latin/Greek/Cyrillic diacritics).
fn fold_char(c: char, out: &mut String) {
    match c {
        'ß' | 'ẞ' => return out.push_str("ss"),
        'ø' | 'Ø' => return out.push('o'),
        'ł' | 'Ł' => return out.push('l'),
        'đ' | 'Đ' => return out.push('d'),
        'æ' | 'Æ' => return out.push_str("ae"),
        'œ' | 'Œ' => return out.push_str("oe"),
        'þ' | 'Þ' => return out.push_str("th"),
        'ı' => return out.push('i'),
        _ => {}
    }
    for d in c.to_lowercase().flat_map(|l| l.nfkd()) {
        // Combining diacritical marks (U+0300–U+036F) go; kana voicing marks stay and
        // recompose below.
        if !('\u{0300}'..='\u{036F}').contains(&d) {
            out.extend(d.to_lowercase());
        }
    }
}

/// `s` folded as terms are (for a term or a query word).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        fold_char(c, &mut out);
    }
    out.nfc().collect()
}

/// The parts of `chunk` (at byte `offset` in the text): folded, with their spans.
fn parts(chunk: &str, offset: usize) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = chunk.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let k = class(chars[i].1);
        let start = i;
        while i < chars.len() && class(chars[i].1) == k {
            i += 1;
        }
        let end_byte = |j: usize| chars.get(j).map_or(chunk.len(), |c| c.0);
        match k {
            Class::Word => {
                let raw = &chunk[chars[start].0..end_byte(i)];
                let folded = fold(raw);
                if !folded.is_empty() && folded.len() <= MAX_PART_BYTES {
                    out.push((folded, offset + chars[start].0..offset + end_byte(i)));
                }
            }
            Class::Cjk => {
                let run = &chars[start..i];
                if run.len() == 1 {
                    let raw = &chunk[run[0].0..end_byte(start + 1)];
                    out.push((fold(raw), offset + run[0].0..offset + end_byte(start + 1)));
                }
                for w in 0..run.len().saturating_sub(1) {
                    let (a, b) = (start + w, start + w + 2);
                    let raw = &chunk[chars[a].0..end_byte(b)];
                    out.push((fold(raw), offset + chars[a].0..offset + end_byte(b)));
                }
            }
            Class::Other => {}
        }
    }
    out
}

/// The chunks of `text`: whitespace-separated, surrounding punctuation trimmed, with their
/// byte offsets.
fn chunks(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_whitespace().filter_map(move |raw| {
        let offset = raw.as_ptr() as usize - text.as_ptr() as usize;
        let trimmed = raw.trim_matches(|c: char| class(c) == Class::Other && !matches!(c, '+' | '#' | '/'));
        // Keep a trailing `+`/`#` that belongs to the word (`C++`, `C#`), not others.
        let trimmed = trimmed.trim_start_matches(['+', '#', '/']);
        if trimmed.is_empty() {
            return None;
        }
        let start = offset + (trimmed.as_ptr() as usize - raw.as_ptr() as usize);
        Some((start, trimmed))
    })
}

/// The terms of a message's text, in order.
pub fn terms(text: &str) -> Vec<Term> {
    let mut out = Vec::new();
    let mut position = 0u32;
    for (offset, chunk) in chunks(text) {
        let ps = parts(chunk, offset);
        if ps.is_empty() {
            continue;
        }
        let inner_punctuation = chunk.chars().any(|c| class(c) == Class::Other);
        if inner_punctuation && chunk.len() <= MAX_WHOLE_BYTES {
            out.push(Term {
                text: fold(chunk),
                position,
                span: offset..offset + chunk.len(),
            });
        }
        for (text, span) in ps {
            out.push(Term { text, position, span });
            position += 1;
        }
    }
    out
}

/// What a query's word or phrase must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phrase {
    /// The parts, matched at consecutive positions.
    pub parts: Vec<String>,
    /// A single word with punctuation inside: its whole term matches too.
    pub whole: Option<String>,
    /// The last part matches as a prefix (the word being typed).
    pub prefix: bool,
}

/// Attachment kinds a query can ask for (`has:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Has {
    /// Any attachment.
    File,
    /// An image attachment.
    Image,
    /// A link in the text.
    Link,
}

/// A parsed query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Every one must match.
    pub must: Vec<Phrase>,
    /// None may match.
    pub exclude: Vec<Phrase>,
    /// `from:` user names.
    pub from: Vec<String>,
    /// `in:` conversation names.
    pub within: Vec<String>,
    /// `has:` attachment kinds, all required.
    pub has: Vec<Has>,
    /// `after:` / `before:` dates as days since 1970-01-01 (UTC), inclusive.
    pub after_day: Option<i64>,
    /// See `after_day`.
    pub before_day: Option<i64>,
}

impl Query {
    /// Whether the query asks for any text (filters alone list matching messages).
    pub fn has_text(&self) -> bool {
        !self.must.is_empty()
    }
}

/// Why a query is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)]
pub enum QueryError {
    #[error("the query is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("the query has more than {MAX_CLAUSES} words, phrases and filters")]
    TooManyClauses,
    #[error("a phrase has more than {MAX_PHRASE_PARTS} words")]
    PhraseTooLong,
    #[error("unknown filter value {0:?} (has: takes file, image or link)")]
    BadHas(String),
    #[error("{0:?} is not a date (YYYY-MM-DD)")]
    BadDate(String),
    #[error("the query only excludes: say what to find")]
    OnlyExcluded,
    #[error("the query is empty")]
    Empty,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
fn day(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// One lexical piece of a query.
#[derive(Debug)]
struct Piece {
    text: String,
    quoted: bool,
    negated: bool,
}

fn pieces(q: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let negated = c == '-';
        if negated {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            // To the closing quote, or the end: an unbalanced quote is a phrase to the end.
            let text: String = chars.by_ref().take_while(|&c| c != '"').collect();
            if text.trim().is_empty() {
                continue;
            }
            out.push(Piece {
                text,
                quoted: true,
                negated,
            });
        } else {
            let mut text = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                text.push(c);
                chars.next();
            }
            out.push(Piece {
                text,
                quoted: false,
                negated,
            });
        }
    }
    out
}

fn phrase(text: &str, prefix: bool) -> Result<Option<Phrase>, QueryError> {
    // A chunk's whole term comes just before its first part, at the same position.
    let mut parts: Vec<String> = Vec::new();
    let mut whole = None;
    let mut last = None;
    for t in terms(text) {
        if Some(t.position) == last {
            let w = parts.pop();
            whole = whole.or(w);
        }
        last = Some(t.position);
        parts.push(t.text);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if parts.len() > MAX_PHRASE_PARTS {
        return Err(QueryError::PhraseTooLong);
    }
    // Expanding a single letter would match half the index; after other parts (`foo.p`)
    // or for a CJK character (which starts the bigrams it is in) it is specific enough.
    let expandable = |p: &String| {
        p.chars().count() >= MIN_PREFIX_CHARS || parts.len() > 1 || p.chars().all(|c| class(c) == Class::Cjk)
    };
    let lone_cjk = parts.len() == 1 && parts[0].chars().count() == 1 && expandable(&parts[0]);
    let prefix = (prefix && parts.last().is_some_and(expandable)) || lone_cjk;
    Ok(Some(Phrase {
        parts,
        whole: whole.filter(|_| chunks(text).count() == 1),
        prefix,
    }))
}

/// Parse a query typed by a user. `typing`: the user is still typing it (the last bare
/// word matches as a prefix); a query that ends in a space does not.
pub fn parse(q: &str, typing: bool) -> Result<Query, QueryError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let ps = pieces(q);
    if ps.len() > MAX_CLAUSES {
        return Err(QueryError::TooManyClauses);
    }
    let ends_open = typing && !q.ends_with(char::is_whitespace) && !q.ends_with('"');
    let mut query = Query::default();
    let n = ps.len();
    for (i, p) in ps.into_iter().enumerate() {
        if !p.quoted && !p.negated {
            if let Some((key, value)) = p.text.split_once(':') {
                let value = value.to_string();
                let filter = match key.to_lowercase().as_str() {
                    "from" if !value.is_empty() => {
                        query.from.push(value.trim_start_matches('@').to_lowercase());
                        true
                    }
                    "in" if !value.is_empty() => {
                        query.within.push(value.trim_start_matches('#').to_lowercase());
                        true
                    }
                    "has" => {
                        query.has.push(match value.to_lowercase().as_str() {
                            "file" => Has::File,
                            "image" => Has::Image,
                            "link" => Has::Link,
                            _ => return Err(QueryError::BadHas(value)),
                        });
                        true
                    }
                    "before" => {
                        query.before_day = Some(day(&value).ok_or(QueryError::BadDate(value))?);
                        true
                    }
                    "after" => {
                        query.after_day = Some(day(&value).ok_or(QueryError::BadDate(value))?);
                        true
                    }
                    // Not a filter (`https://…`, `10:30`): a word.
                    _ => false,
                };
                if filter {
                    continue;
                }
            }
        }
        let prefix = ends_open && i + 1 == n && !p.quoted && !p.negated;
        if let Some(ph) = phrase(&p.text, prefix)? {
            if p.negated {
                query.exclude.push(Phrase { prefix: false, ..ph });
            } else {
                query.must.push(Phrase {
                    whole: if p.quoted { None } else { ph.whole.clone() },
                    ..ph
                });
            }
        }
    }
    let filters = !query.from.is_empty()
        || !query.within.is_empty()
        || !query.has.is_empty()
        || query.after_day.is_some()
        || query.before_day.is_some();
    if query.must.is_empty() && !filters {
        return Err(if query.exclude.is_empty() {
            QueryError::Empty
        } else {
            QueryError::OnlyExcluded
        });
    }
    Ok(query)
}

/// Whether the terms of a text (from [`terms`]) match `p`.
pub fn matches(terms: &[Term], p: &Phrase) -> bool {
    p.whole.as_ref().is_some_and(|w| terms.iter().any(|t| &t.text == w)) || occurrences(terms, p).next().is_some()
}

/// Each place `p`'s parts match `terms` at consecutive positions: the terms matched, first
/// to last (the last part as a prefix when `p.prefix`).
fn occurrences<'a>(terms: &'a [Term], p: &'a Phrase) -> impl Iterator<Item = Vec<&'a Term>> + 'a {
    let last = p.parts.len().saturating_sub(1);
    let hit = move |t: &Term, i: usize| {
        let part = &p.parts[i];
        if p.prefix && i == last {
            t.text.starts_with(part.as_str())
        } else {
            &t.text == part
        }
    };
    terms
        .iter()
        .filter(move |t| !p.parts.is_empty() && hit(t, 0))
        .filter_map(move |start| {
            let mut found = vec![start];
            for k in 1..p.parts.len() {
                let pos = start.position + k as u32;
                found.push(terms.iter().find(|t| t.position == pos && hit(t, k))?);
            }
            Some(found)
        })
}

/// What a message with `text` and `attachments` has for `has:` filters: attachments (any),
/// an image, a link in its text.
pub fn message_has(text: &str, attachments: &[crate::pb::Attachment]) -> Vec<Has> {
    let mut has = Vec::new();
    if !attachments.is_empty() {
        has.push(Has::File);
    }
    if attachments.iter().any(|a| a.mime.starts_with("image/")) {
        has.push(Has::Image);
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("https://") || lower.contains("http://") {
        has.push(Has::Link);
    }
    has
}

/// The attachments' names a message is found by (empty names left out).
pub fn attachment_names(attachments: &[crate::pb::Attachment]) -> Vec<String> {
    attachments
        .iter()
        .map(|a| a.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// What is indexed of a message, on the server and on devices alike: its text, then each
/// attachment name on a line of its own.
pub fn indexed_text(text: &str, names: &[String]) -> String {
    let mut all = text.to_string();
    for n in names {
        all.push('\n');
        all.push_str(n);
    }
    all
}

/// Characters of a hit's snippet.
pub const SNIPPET_CHARS: usize = 160;

/// A hit's snippet (PROTOCOL.md §14.3): around the first match in `text`, or — when only
/// an attachment's name matched — that name; in pieces, the matches marked.
pub fn hit_snippet(text: &str, names: &[String], q: &Query) -> Vec<crate::pb::SnippetPart> {
    let mut spans = highlights(text, q);
    let mut source = text;
    if spans.is_empty() {
        if let Some((name, found)) = names
            .iter()
            .map(|n| (n, highlights(n, q)))
            .find(|(_, found)| !found.is_empty())
        {
            (source, spans) = (name, found);
        }
    }
    snippet(source, &spans, SNIPPET_CHARS)
        .into_iter()
        .map(|(text, hit)| crate::pb::SnippetPart { text, hit })
        .collect()
}

/// Whether a text matches the text part of `q` (every `must`, no `exclude`).
pub fn text_matches(text: &str, q: &Query) -> bool {
    let ts = terms(text);
    q.must.iter().all(|p| matches(&ts, p)) && !q.exclude.iter().any(|p| matches(&ts, p))
}

/// The bytes of `text` that match `q`'s words and phrases (not its exclusions), merged and
/// in order: what a result highlights.
pub fn highlights(text: &str, q: &Query) -> Vec<Range<usize>> {
    let ts = terms(text);
    let mut spans: Vec<Range<usize>> = Vec::new();
    for p in &q.must {
        if let Some(w) = &p.whole {
            spans.extend(ts.iter().filter(|t| &t.text == w).map(|t| t.span.clone()));
        }
        // A phrase is highlighted from its first part to its last.
        spans.extend(occurrences(&ts, p).map(|found| found[0].span.start..found[found.len() - 1].span.end));
    }
    spans.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in spans {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Characters of context a snippet keeps before its first highlight.
const SNIPPET_LEAD: usize = 40;

/// A snippet of `text` of at most `max_chars` characters (plus an ellipsis at a cut end)
/// around the first of `spans` (from [`highlights`]), as (piece, highlighted) pairs in
/// order. Without highlights it is the start of the text.
pub fn snippet(text: &str, spans: &[Range<usize>], max_chars: usize) -> Vec<(String, bool)> {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let chars = boundaries.len() - 1;
    let first_char = spans
        .first()
        .map_or(0, |r| boundaries.partition_point(|b| *b < r.start));
    let mut start = first_char.saturating_sub(SNIPPET_LEAD);
    if chars.saturating_sub(start) < max_chars {
        start = chars.saturating_sub(max_chars);
    }
    // Start at a word where one is near.
    if start > 0 {
        if let Some(ws) = text[boundaries[start]..boundaries[first_char]].find(char::is_whitespace) {
            let cut = boundaries[start] + ws;
            start = boundaries.partition_point(|b| *b <= cut);
        }
    }
    let end = (start + max_chars).min(chars);
    let (lo, hi) = (boundaries[start], boundaries[end]);
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut push = |piece: &str, hit: bool| {
        if piece.is_empty() {
            return;
        }
        match out.last_mut() {
            Some((t, h)) if *h == hit => t.push_str(piece),
            _ => out.push((piece.to_string(), hit)),
        }
    };
    if lo > 0 {
        push("…", false);
    }
    let mut at = lo;
    for r in spans {
        let (a, b) = (r.start.max(at), r.end.min(hi));
        if a >= b {
            continue;
        }
        push(&text[at..a], false);
        push(&text[a..b], true);
        at = b;
    }
    push(&text[at..hi], false);
    if hi < text.len() {
        push("…", false);
    }
    out
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
