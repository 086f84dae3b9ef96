//! Golden texts and queries for search (PROTOCOL.md §14): each is a promise to users.
use super::*;

fn found(text: &str, q: &str) -> bool {
    text_matches(text, &parse(q, false).expect("the query parses"))
}

fn typing(text: &str, q: &str) -> bool {
    text_matches(text, &parse(q, true).expect("the query parses"))
}

fn texts(text: &str) -> Vec<(String, u32)> {
    terms(text).into_iter().map(|t| (t.text, t.position)).collect()
}

#[test]
fn a_chunk_with_punctuation_is_a_term_whole_and_its_parts_follow() {
    assert_eq!(
        texts("see foo.png, bar"),
        vec![
            ("see".into(), 0),
            ("foo.png".into(), 1),
            ("foo".into(), 1),
            ("png".into(), 2),
            ("bar".into(), 3)
        ]
    );
    let t = terms("x Foo.PNG");
    assert_eq!(
        &"x Foo.PNG"[t[1].span.clone()],
        "Foo.PNG",
        "spans point into the original text"
    );
}

#[test]
fn a_file_name_is_found_by_its_stem_and_whole() {
    assert!(found("here is foo.png", "foo"));
    assert!(found("here is foo.png", "foo.png"));
    assert!(found("here is foo.png", "png"));
    assert!(!found("here is food.png", "foo"), "words are not substrings");
}

#[test]
fn a_url_and_a_path_are_found_whole_and_by_their_parts() {
    let text = "docs at https://example.com/guide/start.html?lang=de, see /usr/local/bin/natter.";
    for q in [
        "https://example.com/guide/start.html?lang=de",
        "example.com",
        "example",
        "guide/start.html",
        "start.html",
        "/usr/local/bin/natter",
        "usr/local",
        "natter",
    ] {
        assert!(found(text, q), "{q:?} finds the text");
    }
    assert!(!found(text, "example.org"));
    assert!(!found(text, "local/usr"), "parts keep their order");
}

#[test]
fn code_tokens_like_cpp20_are_found() {
    let text = "we moved to C++20 and C# last year";
    assert!(found(text, "C++20"));
    assert!(found(text, "c++20"));
    assert!(found(text, "C#"));
    assert!(!found("we moved to C 21", "C++20"));
    assert_eq!(terms("C++20")[0].text, "c++20");
}

#[test]
fn stop_words_are_words_and_phrases_keep_order() {
    let text = "To be, or not to be: that is the question.";
    assert!(found(text, "\"to be or not to be\""));
    assert!(found(text, "the"), "no stop words are dropped");
    assert!(!found("not to be or to be", "\"to be or not to be\""));
    assert!(found("not to be or to be", "to be or not"), "words alone in any order");
}

#[test]
fn excluded_words_and_phrases_rule_a_text_out() {
    assert!(found("apple pie", "apple -banana"));
    assert!(!found("apple banana split", "apple -banana"));
    assert!(!found("apple banana split", "apple -\"banana split\""));
    assert!(found("apple split banana", "apple -\"banana split\""));
    assert_eq!(parse("-banana", false), Err(QueryError::OnlyExcluded));
}

#[test]
fn the_last_word_matches_as_a_prefix_while_typing() {
    assert!(typing("hello world", "hel"));
    assert!(typing("hello world", "hello wor"));
    assert!(!found("hello world", "hel"), "a finished query matches whole words");
    assert!(!typing("hello world", "hel "), "a space ends the word");
    assert!(!typing("hello world", "wor hello"), "only the last word is a prefix");
    assert!(!typing("hello world", "h"), "one character is too short to expand");
    assert!(
        typing("see foo.png", "foo.p"),
        "the last part of a word with punctuation"
    );
}

#[test]
fn german_case_and_sharp_s_fold() {
    assert!(found("Die Straße ist lang", "strasse"));
    assert!(found("die strasse", "Straße"));
    assert!(found("STRASSE", "straße"));
    assert!(found("Grüße von Müller", "muller"));
    assert!(found("Grüße von Müller", "GRÜSSE"));
    assert!(found("Crème brûlée", "creme brulee"));
    assert!(found("Øresund og Łódź", "oresund lodz"));
}

#[test]
fn russian_folds_case_and_yo() {
    let text = "Привет, мир! Ёлка стоит у МОСКВЫ.";
    assert!(found(text, "привет"));
    assert!(found(text, "ПРИВЕТ мир"));
    assert!(found(text, "елка"));
    assert!(found(text, "москвы"));
    assert!(!found(text, "москва"), "no stemming");
}

#[test]
fn japanese_is_found_by_character_bigrams() {
    let text = "東京タワーに行きました";
    assert!(found(text, "東京"));
    assert!(found(text, "タワー"));
    assert!(found(text, "行き"));
    assert!(!found(text, "京都"));
    assert!(found(text, "東"), "a single character matches as itself");
    assert!(found("ｶﾀｶﾅ", "カタカナ"), "half-width katakana folds");
    assert!(found("がっこう", "がっこう"));
    assert!(!found("かっこう", "がっこう"), "voicing marks are kept");
    assert!(found("ＣＰＵ使用率", "cpu"), "full-width Latin folds");
}

#[test]
fn filters_are_read_out_of_the_query() {
    let q = parse(
        "from:@Alice in:#General has:file after:2026-01-01 before:2026-12-31 report",
        false,
    )
    .unwrap();
    assert_eq!(q.from, vec!["alice".to_string()]);
    assert_eq!(q.within, vec!["general".to_string()]);
    assert_eq!(q.has, vec![Has::File]);
    assert_eq!(q.after_day, Some(20_454));
    assert_eq!(q.before_day, Some(20_818));
    assert_eq!(q.must.len(), 1);
    assert_eq!(q.must[0].parts, vec!["report".to_string()]);
    assert!(parse("has:file", false).is_ok(), "filters alone list messages");
    assert_eq!(parse("has:car", false), Err(QueryError::BadHas("car".into())));
    assert_eq!(
        parse("after:2026-13-01 x", false),
        Err(QueryError::BadDate("2026-13-01".into()))
    );
    assert_eq!(day("1970-01-01"), Some(0));
    assert_eq!(day("2000-03-01"), Some(11_017));
    // Not a filter: a word with a colon.
    assert!(found("meet at 10:30 today", "10:30"));
    assert!(found("see https://natter.dev", "https://natter.dev"));
}

#[test]
fn hostile_queries_are_refused_or_bounded() {
    assert_eq!(parse(&"a".repeat(100_000), false), Err(QueryError::TooLong));
    let many = vec!["w"; 1_000].join(" ");
    assert_eq!(parse(&many, false), Err(QueryError::TooLong));
    let clauses = vec!["w"; MAX_CLAUSES + 1].join(" ");
    assert_eq!(parse(&clauses, false), Err(QueryError::TooManyClauses));
    let long_phrase = format!("\"{}\"", vec!["w"; MAX_PHRASE_PARTS + 1].join(" "));
    assert_eq!(parse(&long_phrase, false), Err(QueryError::PhraseTooLong));
    assert_eq!(parse(&"\"".repeat(500), false), Err(QueryError::Empty), "nested quotes");
    assert_eq!(parse("   ", false), Err(QueryError::Empty));
    assert_eq!(parse("!!! ???", false), Err(QueryError::Empty));
    // Regex-like input is text, matched literally.
    assert!(parse("(a+)+$ [a-z]*.*", false).is_ok());
    assert!(found("x (a+)+$ y", "(a+)+$"));
    assert!(parse("\"unbalanced phrase", false).is_ok());
}

#[test]
fn long_runs_are_not_indexed_but_everything_else_is() {
    let hash = "a".repeat(MAX_PART_BYTES + 1);
    assert!(terms(&format!("x {hash} y")).iter().all(|t| t.text != hash));
    assert_eq!(texts(&format!("x {hash} y")), vec![("x".into(), 0), ("y".into(), 1)]);
}

/// The snippet of `text` for query `q`, with highlighted pieces in brackets.
fn marked(text: &str, q: &str, max: usize) -> String {
    let q = parse(q, true).unwrap();
    snippet(text, &highlights(text, &q), max)
        .into_iter()
        .map(|(t, hit)| if hit { format!("[{t}]") } else { t })
        .collect()
}

#[test]
fn snippets_highlight_what_matched_around_the_first_match() {
    assert_eq!(
        marked("Ship the Release today", "release", 160),
        "Ship the [Release] today"
    );
    // A phrase is one highlight; a prefix highlights the whole word; excluded is not.
    assert_eq!(
        marked("the quick brown fox jumps", "\"quick brown\" -fox jum", 160),
        "the [quick brown] fox [jumps]"
    );
    // Whole terms: a file name and a URL.
    assert_eq!(marked("see report.pdf now", "report.pdf", 160), "see [report.pdf] now");
    assert_eq!(
        marked("docs at https://natter.dev/x ok", "natter.dev", 160),
        "docs at https://[natter.dev]/x ok"
    );
    // Accents and case are folded, the original is shown.
    assert_eq!(marked("Café CRÈME", "creme", 160), "Café [CRÈME]");
    // CJK bigrams.
    assert_eq!(marked("我们明天开会", "明天", 160), "我们[明天]开会");
    // A long text is cut around the first match, at a word, with ellipses.
    let long = format!("{} needle {}", "word ".repeat(100), "tail ".repeat(100));
    let s = marked(&long, "needle", 60);
    assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
    assert!(s.contains("[needle]"));
    assert!(s.trim_start_matches('…').starts_with("word"), "starts at a word: {s}");
    assert!(s.chars().filter(|c| *c != '[' && *c != ']').count() <= 62);
    // No match (a filter-only query): the start of the text.
    assert_eq!(marked("hello world", "has:link", 5), "hello…");
    // Multi-byte text is cut at characters.
    let s = marked(&"é".repeat(300), "é", 10);
    assert!(s.chars().count() <= 12);
}
