//! The embedded search index on its own (issue 18): index synthetic messages into the
//! server's tantivy index in the feed's batches, then time queries a user would type, in the
//! scope of one user's conversations. No server process: this measures the index component
//! (terms, tantivy, commits), not the feed or the wire.
//!
//! Messages are 5 to 20 words drawn from a 20,000-word vocabulary with Zipf-like weights
//! (common words are common), one in ten with a URL and one in twenty with a file name,
//! spread over `conversations` conversations.
use std::time::Instant;

use hdrhistogram::Histogram;
use natter_protocol::search::parse;
use natter_protocol::{ConversationId, UserId};
use natter_server::search::{Batch, Doc, Op, Order, Request, SearchIndex, TantivyIndex};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{histogram, latency, Latency};

/// Index benchmark parameters.
#[derive(Clone, Debug, Serialize)]
pub struct SearchIndexOpts {
    pub messages: usize,
    pub conversations: u64,
    /// Messages per index commit (the feed's page).
    pub batch: usize,
    pub queries: usize,
    /// Conversations in a query's scope (one user's).
    pub scope: usize,
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Figures {
    indexed_per_sec: f64,
    index_secs: f64,
    index_bytes: u64,
    bytes_per_message: f64,
    queries: serde_json::Map<String, serde_json::Value>,
}

struct Words {
    vocab: Vec<String>,
    cdf: Vec<f64>,
}

impl Words {
    fn new(rng: &mut rand::rngs::StdRng) -> Words {
        const SYLLABLES: [&str; 24] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do", "fa", "gu", "ho", "ji", "ko", "la", "ma", "no",
            "pe", "qui", "re", "si", "tu", "zo",
        ];
        let mut vocab = std::collections::BTreeSet::new();
        while vocab.len() < 20_000 {
            let n = rng.gen_range(1..=4);
            let w: String = (0..n).map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())]).collect();
            vocab.insert(w);
        }
        let vocab: Vec<String> = vocab.into_iter().collect();
        let mut acc = 0.0;
        let cdf = (1..=vocab.len())
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Words {
            vocab,
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn pick(&self, rng: &mut rand::rngs::StdRng) -> &str {
        let x: f64 = rng.gen();
        let i = self.cdf.partition_point(|c| *c < x).min(self.vocab.len() - 1);
        &self.vocab[i]
    }

    fn message(&self, rng: &mut rand::rngs::StdRng) -> String {
        let n = rng.gen_range(5..=20);
        let mut words: Vec<String> = (0..n).map(|_| self.pick(rng).to_string()).collect();
        if rng.gen_ratio(1, 10) {
            words.push(format!("https://{}.example.com/{}", self.pick(rng), self.pick(rng)));
        }
        if rng.gen_ratio(1, 20) {
            words.push(format!("{}.pdf", self.pick(rng)));
        }
        words.join(" ")
    }
}

/// Index `o.messages` messages, then time `o.queries` queries of each kind.
pub fn search_index(o: &SearchIndexOpts) -> anyhow::Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(&o.dir);
    let ix = TantivyIndex::open(&o.dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let words = Words::new(&mut rng);
    let mut last_seq = vec![0u64; o.conversations as usize + 1];
    let mut kept: Vec<String> = Vec::new();

    let started = Instant::now();
    let mut done = 0;
    while done < o.messages {
        let n = o.batch.min(o.messages - done);
        let mut ops = Vec::with_capacity(n);
        let mut through = std::collections::HashMap::new();
        for _ in 0..n {
            let conv = rng.gen_range(1..=o.conversations);
            last_seq[conv as usize] += 1;
            let seq = last_seq[conv as usize];
            let text = words.message(&mut rng);
            if kept.len() < 10_000 && rng.gen_ratio(1, 50) {
                kept.push(text.clone());
            }
            ops.push(Op::Add(Doc {
                conversation: ConversationId(conv),
                seq,
                sender: UserId(rng.gen_range(1..=1_000)),
                time_ms: 1_700_000_000_000 + done as u64,
                text,
                names: Vec::new(),
                has: Vec::new(),
            }));
            through.insert(ConversationId(conv), seq);
            done += 1;
        }
        ix.apply(&Batch {
            ops,
            through: through.into_iter().collect(),
            cursor: None,
        })?;
        if done % 100_000 < o.batch {
            eprintln!(
                "  {done}/{} indexed ({:.0}/s)",
                o.messages,
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let index_secs = started.elapsed().as_secs_f64();
    let index_bytes = dir_bytes(&o.dir);

    // Queries a user types, in the scope of their conversations.
    let mut queries = serde_json::Map::new();
    let kinds: [(&str, bool); 4] = [
        ("word", false),
        ("two words", false),
        ("typing", true),
        ("phrase", false),
    ];
    for (kind, typing) in kinds {
        let mut h: Histogram<u64> = histogram();
        let mut hits = 0usize;
        for _ in 0..o.queries {
            let q = match kind {
                "word" => words.pick(&mut rng).to_string(),
                "two words" => format!("{} {}", words.pick(&mut rng), words.pick(&mut rng)),
                "typing" => {
                    let w = words.pick(&mut rng);
                    format!("{} {}", words.pick(&mut rng), &w[..w.len().min(3)])
                }
                _ => {
                    let text = &kept[rng.gen_range(0..kept.len())];
                    let ws: Vec<&str> = text.split(' ').collect();
                    let i = rng.gen_range(0..ws.len().saturating_sub(1).max(1));
                    format!("\"{}\"", ws[i..(i + 2).min(ws.len())].join(" "))
                }
            };
            let Ok(query) = parse(&q, typing) else { continue };
            let req = Request {
                query,
                conversations: (0..o.scope)
                    .map(|_| ConversationId(rng.gen_range(1..=o.conversations)))
                    .collect(),
                senders: Vec::new(),
                after_ms: None,
                before_ms: None,
                below: None,
                order: Order::Recent,
                offset: 0,
                limit: 20,
            };
            let t = Instant::now();
            let (found, _) = ix.search(&req)?;
            h.record((t.elapsed().as_micros() as u64).max(1))?;
            hits += found.len();
        }
        let l: Latency = latency(&h);
        queries.insert(
            kind.into(),
            serde_json::json!({ "latency": l, "mean_hits": hits as f64 / o.queries as f64 }),
        );
    }
    let figures = Figures {
        indexed_per_sec: o.messages as f64 / index_secs,
        index_secs,
        index_bytes,
        bytes_per_message: index_bytes as f64 / o.messages as f64,
        queries,
    };
    Ok(serde_json::json!({
        "scenario": "search-index",
        "params": o,
        "figures": figures,
    }))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
