//! `@name` in message text (PROTOCOL.md §13.2): the one parser the server (plain text) and
//! the encrypting clients (before sealing) share, so both find the same mentions.

/// Every `@name` in `text` that starts a word, lower-cased, of username characters
/// (`@here` included: the caller decides what it means).
pub fn at_names(text: &str) -> impl Iterator<Item = String> + '_ {
    let username = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    text.char_indices().filter_map(move |(i, c)| {
        if c != '@'
            || text[..i]
                .chars()
                .next_back()
                .is_some_and(|p| p.is_alphanumeric() || p == '@')
        {
            return None;
        }
        let name: String = text[i + 1..].chars().take_while(|c| username(*c)).collect();
        let name = name.trim_end_matches(['.', '-']).to_ascii_lowercase();
        (!name.is_empty()).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_words_and_end_before_punctuation() {
        let got: Vec<String> = at_names("hi @Bob, @carol.d. @x-y- mail@alice.example @@eve (@here)").collect();
        assert_eq!(got, ["bob", "carol.d", "x-y", "here"]);
        assert_eq!(at_names("@").count(), 0);
        assert_eq!(at_names("ünï@bob").count(), 0, "inside a word");
    }
}
