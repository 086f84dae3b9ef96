//! The embedded index: tantivy in a directory under the data dir. Text is indexed with
//! natter's own terms (`natter_protocol::search::terms`, given to tantivy pre-tokenized,
//! with positions for phrases); conversation, seq, sender, time and attachment kinds are
//! filter fields. A batch of changes is one tantivy commit that also holds one position
//! document per conversation it brings up to date (`kind` = `pos`, beside the messages'
//! `msg`) and, as the commit's payload, the feed's cursor: the index and its positions
//! never disagree after a crash.
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use natter_protocol::search::{terms, Has, Phrase};
use natter_protocol::ConversationId;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query as TQuery, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{PreTokenizedString, Token};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, Order as TOrder, ReloadPolicy, TantivyDocument, Term};

use super::{Batch, Doc, Hit, Op, Order, Request, SearchError, SearchIndex};

/// Most terms a prefix expands to.
const MAX_EXPANSIONS: u32 = 64;
/// The indexing writer's memory budget.
const WRITER_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
struct Fields {
    /// `<conversation>/<seq>`: what an edit or delete replaces; `pos/<conversation>` for a
    /// position.
    id: Field,
    /// `msg` or `pos`.
    kind: Field,
    conv: Field,
    seq: Field,
    sender: Field,
    time: Field,
    /// [`super::recency`]: the newest-first order and its page boundaries.
    recency: Field,
    has: Field,
    text: Field,
    /// The text as written, and the attachments' names (stored, not indexed): for
    /// snippets.
    body: Field,
    names: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        kind: b.add_text_field("kind", STRING),
        conv: b.add_u64_field("conv", INDEXED | STORED | FAST),
        seq: b.add_u64_field("seq", STORED | FAST),
        sender: b.add_u64_field("sender", INDEXED),
        time: b.add_u64_field("time", INDEXED | STORED | FAST),
        recency: b.add_u64_field("recency", INDEXED | FAST),
        has: b.add_text_field("has", STRING),
        text: b.add_text_field("text", text),
        body: b.add_text_field("body", STORED),
        names: b.add_text_field("names", STORED),
    };
    (b.build(), fields)
}

fn has_name(h: Has) -> &'static str {
    match h {
        Has::File => "file",
        Has::Image => "image",
        Has::Link => "link",
    }
}

fn doc_id(conv: ConversationId, seq: u64) -> String {
    format!("{}/{seq}", conv.0)
}

/// The embedded index.
pub struct TantivyIndex {
    index: Index,
    fields: Fields,
    /// `None` once closed (the directory's lock released).
    writer: Mutex<Option<IndexWriter>>,
    reader: IndexReader,
}

impl std::fmt::Debug for TantivyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyIndex").finish_non_exhaustive()
    }
}

impl TantivyIndex {
    /// Open the index in `dir`, creating it (and the directory) if missing.
    pub fn open(dir: &Path) -> Result<TantivyIndex, SearchError> {
        std::fs::create_dir_all(dir).map_err(|e| SearchError::Index(format!("{}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(|e| SearchError::Index(e.to_string()))?;
        let index = match Index::open_or_create(directory.clone(), schema.clone()) {
            Ok(index) => index,
            // Made by a version with another schema: the index is a view of the log, so
            // it is rebuilt (the feed reconciles from nothing).
            Err(tantivy::TantivyError::SchemaError(e)) => {
                tracing::warn!(error = %e, dir = %dir.display(), "search index has another schema; rebuilding it");
                drop(directory);
                std::fs::remove_dir_all(dir).map_err(|e| SearchError::Index(format!("{}: {e}", dir.display())))?;
                std::fs::create_dir_all(dir).map_err(|e| SearchError::Index(format!("{}: {e}", dir.display())))?;
                let directory =
                    tantivy::directory::MmapDirectory::open(dir).map_err(|e| SearchError::Index(e.to_string()))?;
                Index::create(directory, schema, tantivy::IndexSettings::default())?
            }
            Err(e) => return Err(e.into()),
        };
        // The writer's threads (indexing, merging, compressing) start at the priority of
        // the thread that makes it: below chat's.
        let writer = crate::background::on_own_thread(|| index.writer_with_num_threads(1, WRITER_BYTES))?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(TantivyIndex {
            index,
            fields,
            writer: Mutex::new(Some(writer)),
            reader,
        })
    }

    /// Stage `batch`'s changes and its positions in `writer`, and commit them as one.
    fn commit(&self, writer: &mut IndexWriter, batch: &Batch) -> Result<(), SearchError> {
        let f = self.fields;
        for op in &batch.ops {
            match op {
                // No delete to queue: each one is looked up in every segment at commit.
                Op::Add(d) => {
                    writer.add_document(self.document(d))?;
                }
                Op::Put(d) => {
                    writer.delete_term(Term::from_field_text(f.id, &doc_id(d.conversation, d.seq)));
                    writer.add_document(self.document(d))?;
                }
                Op::Remove { conversation, seq } => {
                    writer.delete_term(Term::from_field_text(f.id, &doc_id(*conversation, *seq)));
                }
                Op::RemoveConversation(c) => {
                    writer.delete_term(Term::from_field_u64(f.conv, c.0));
                }
                Op::RemoveThrough { conversation, seq } => {
                    // The conversation's messages (not its position) up to `seq`.
                    let up_to = RangeQuery::new(Bound::Unbounded, Bound::Included(Term::from_field_u64(f.seq, *seq)));
                    let q = all_of(vec![
                        u64_is(f.conv, conversation.0),
                        kind(f.kind, "msg"),
                        Box::new(up_to),
                    ]);
                    writer.delete_query(Box::new(q))?;
                }
                Op::RemoveSender { conversation, sender } => {
                    let q = all_of(vec![u64_is(f.conv, conversation.0), u64_is(f.sender, sender.0)]);
                    writer.delete_query(Box::new(q))?;
                }
            }
        }
        // After the ops: a conversation deleted in this batch still gets its position.
        for (conv, seq) in &batch.through {
            writer.delete_term(Term::from_field_text(f.id, &pos_id(*conv)));
            let mut doc = TantivyDocument::default();
            doc.add_text(f.id, pos_id(*conv));
            doc.add_text(f.kind, "pos");
            doc.add_u64(f.conv, conv.0);
            doc.add_u64(f.seq, *seq);
            writer.add_document(doc)?;
        }
        let mut commit = writer.prepare_commit()?;
        if let Some(c) = &batch.cursor {
            commit.set_payload(c);
        } else if let Some(old) = self.index.load_metas()?.payload {
            commit.set_payload(&old);
        }
        commit.commit()?;
        Ok(())
    }

    fn document(&self, d: &Doc) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, doc_id(d.conversation, d.seq));
        doc.add_text(f.kind, "msg");
        doc.add_u64(f.conv, d.conversation.0);
        doc.add_u64(f.seq, d.seq);
        doc.add_u64(f.sender, d.sender.0);
        doc.add_u64(f.time, d.time_ms);
        doc.add_u64(f.recency, super::recency(d.time_ms, d.seq));
        doc.add_text(f.body, &d.text);
        for n in &d.names {
            doc.add_text(f.names, n);
        }
        let indexed = d.indexed_text();
        for h in &d.has {
            doc.add_text(f.has, has_name(*h));
        }
        let tokens = terms(&indexed)
            .into_iter()
            .map(|t| Token {
                offset_from: t.span.start,
                offset_to: t.span.end,
                position: t.position as usize,
                text: t.text,
                position_length: 1,
            })
            .collect();
        doc.add_pre_tokenized_text(f.text, PreTokenizedString { text: indexed, tokens });
        doc
    }

    /// One word or phrase of a query.
    fn phrase(&self, p: &Phrase) -> Box<dyn TQuery> {
        let f = self.fields.text;
        let terms: Vec<Term> = p.parts.iter().map(|t| Term::from_field_text(f, t)).collect();
        let parts: Box<dyn TQuery> = match (terms.len(), p.prefix) {
            (_, true) => {
                let mut q = PhrasePrefixQuery::new(terms);
                q.set_max_expansions(MAX_EXPANSIONS);
                Box::new(q)
            }
            (1, false) => Box::new(TermQuery::new(
                terms.into_iter().next().expect("one term"),
                IndexRecordOption::WithFreqs,
            )),
            _ => Box::new(PhraseQuery::new(terms)),
        };
        match &p.whole {
            Some(w) => Box::new(BooleanQuery::union(vec![
                parts,
                Box::new(TermQuery::new(
                    Term::from_field_text(f, w),
                    IndexRecordOption::WithFreqs,
                )),
            ])),
            None => parts,
        }
    }

    fn query(&self, req: &Request) -> Box<dyn TQuery> {
        let f = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
        clauses.push((Occur::Must, kind(f.kind, "msg")));
        clauses.push((
            Occur::Must,
            Box::new(TermSetQuery::new(
                req.conversations.iter().map(|c| Term::from_field_u64(f.conv, c.0)),
            )),
        ));
        if !req.senders.is_empty() {
            clauses.push((
                Occur::Must,
                Box::new(TermSetQuery::new(
                    req.senders.iter().map(|u| Term::from_field_u64(f.sender, u.0)),
                )),
            ));
        }
        if req.after_ms.is_some() || req.before_ms.is_some() {
            let lower = req
                .after_ms
                .map_or(Bound::Unbounded, |t| Bound::Included(Term::from_field_u64(f.time, t)));
            let upper = req
                .before_ms
                .map_or(Bound::Unbounded, |t| Bound::Excluded(Term::from_field_u64(f.time, t)));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        if let Some(below) = req.below {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Excluded(Term::from_field_u64(f.recency, below)),
                )),
            ));
        }
        for h in &req.query.has {
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.has, has_name(*h)),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        for p in &req.query.must {
            clauses.push((Occur::Must, self.phrase(p)));
        }
        for p in &req.query.exclude {
            clauses.push((Occur::MustNot, self.phrase(p)));
        }
        if req.query.must.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    fn hit(&self, searcher: &tantivy::Searcher, addr: DocAddress, score: f32) -> Result<Hit, SearchError> {
        let doc: TantivyDocument = searcher.doc(addr)?;
        let u = |field: Field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Hit {
            conversation: ConversationId(u(self.fields.conv)),
            seq: u(self.fields.seq),
            time_ms: u(self.fields.time),
            score,
            text: doc
                .get_first(self.fields.body)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            names: doc
                .get_all(self.fields.names)
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        })
    }
}

fn kind(field: Field, k: &str) -> Box<dyn TQuery> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, k),
        IndexRecordOption::Basic,
    ))
}

/// Documents whose `field` holds `value`.
fn u64_is(field: Field, value: u64) -> Box<dyn TQuery> {
    Box::new(TermQuery::new(
        Term::from_field_u64(field, value),
        IndexRecordOption::Basic,
    ))
}

/// Documents that match every one of `queries`.
fn all_of(queries: Vec<Box<dyn TQuery>>) -> BooleanQuery {
    BooleanQuery::new(queries.into_iter().map(|q| (Occur::Must, q)).collect())
}

fn pos_id(conv: ConversationId) -> String {
    format!("pos/{}", conv.0)
}

impl SearchIndex for TantivyIndex {
    fn apply(&self, batch: &Batch) -> Result<(), SearchError> {
        let mut guard = self.writer.lock().expect("index writer");
        let writer = guard
            .as_mut()
            .ok_or_else(|| SearchError::Index("the index is closed".into()))?;
        // A batch that fails is undone whole: its documents must not linger in the writer
        // for the next commit (the feed applies the batch again, and an `Add` replaces
        // nothing).
        if let Err(e) = self.commit(writer, batch) {
            let _ = writer.rollback();
            return Err(e);
        }
        // A deleted account's messages leave the files too (PROTOCOL.md §5.16): deleted
        // documents stay in their segment until it is merged, so merge every segment now
        // and remove the files the merge replaced.
        if batch.ops.iter().any(|o| matches!(o, Op::RemoveSender { .. })) {
            let ids = self.index.searchable_segment_ids()?;
            if !ids.is_empty() {
                writer.merge(&ids).wait()?;
            }
            // Searchers of the old segments let go before their files are collected.
            self.reader.reload()?;
            let gc = writer.garbage_collect_files().wait()?;
            tracing::info!(
                deleted = gc.deleted_files.len(),
                failed = gc.failed_to_delete_files.len(),
                "search: a deleted account's messages merged out"
            );
        }
        drop(guard);
        self.reader.reload()?;
        Ok(())
    }

    fn close(&self) {
        // Dropping the writer waits for its threads and releases the directory's lock.
        drop(self.writer.lock().expect("index writer").take());
    }

    fn positions(&self) -> Result<Vec<(ConversationId, u64)>, SearchError> {
        let searcher = self.reader.searcher();
        let docs = searcher.search(&kind(self.fields.kind, "pos"), &tantivy::collector::DocSetCollector)?;
        docs.into_iter()
            .map(|addr| {
                let h = self.hit(&searcher, addr, 0.0)?;
                Ok((h.conversation, h.seq))
            })
            .collect()
    }

    fn cursor(&self) -> Result<Option<String>, SearchError> {
        Ok(self.index.load_metas()?.payload)
    }

    fn search(&self, req: &Request) -> Result<(Vec<Hit>, usize), SearchError> {
        if req.conversations.is_empty() || req.limit == 0 {
            return Ok((Vec::new(), 0));
        }
        let searcher = self.reader.searcher();
        let query = self.query(req);
        let top = TopDocs::with_limit(req.limit).and_offset(req.offset);
        let hits = match req.order {
            Order::Recent => {
                let (docs, total) = searcher.search(
                    &query,
                    &(top.order_by_fast_field::<u64>("recency", TOrder::Desc), Count),
                )?;
                let hits = docs
                    .into_iter()
                    .map(|(_, addr)| self.hit(&searcher, addr, 0.0))
                    .collect::<Result<Vec<_>, _>>()?;
                (hits, total)
            }
            Order::Relevant => {
                let (docs, total) = searcher.search(&query, &(top, Count))?;
                let hits = docs
                    .into_iter()
                    .map(|(score, addr)| self.hit(&searcher, addr, score))
                    .collect::<Result<Vec<_>, _>>()?;
                (hits, total)
            }
        };
        Ok(hits)
    }
}

#[cfg(test)]
#[path = "tantivy_tests.rs"]
mod tests;
