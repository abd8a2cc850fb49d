//! Splitting a long text into chunks of at most `max_chars` characters, at paragraph
//! boundaries where possible, then at sentence boundaries, then at spaces.

/// A piece of text that must not be split further, and whether it starts a paragraph.
struct Piece<'a> {
    text: &'a str,
    new_paragraph: bool,
}

/// Split `text` into chunks of at most `max_chars` characters (`max_chars` ≥ 1). Paragraphs
/// (separated by blank lines) are packed together while they fit; a paragraph too long for
/// one chunk is split into sentences, and a sentence too long for one chunk at spaces.
/// Whitespace at the edges of paragraphs and sentences is dropped; nothing else is.
pub fn split(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut pieces = Vec::new();
    for paragraph in paragraphs(text) {
        if char_len(paragraph) <= max_chars {
            pieces.push(Piece {
                text: paragraph,
                new_paragraph: true,
            });
            continue;
        }
        let mut first = true;
        for sentence in sentences(paragraph) {
            for part in hard_split(sentence, max_chars) {
                pieces.push(Piece {
                    text: part,
                    new_paragraph: first,
                });
                first = false;
            }
        }
    }

    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for piece in pieces {
        let sep = if piece.new_paragraph { "\n\n" } else { " " };
        let piece_chars = char_len(piece.text);
        if !current.is_empty() && current_chars + sep.len() + piece_chars > max_chars {
            chunks.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        if !current.is_empty() {
            current.push_str(sep);
            current_chars += sep.len();
        }
        current.push_str(piece.text);
        current_chars += piece_chars;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Paragraphs: runs of lines separated by lines that are empty or only whitespace, trimmed.
fn paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            if let Some(s) = start.take() {
                out.push(text[s..end].trim());
            }
        } else {
            start.get_or_insert(offset);
            end = offset + line.len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        out.push(text[s..end].trim());
    }
    out
}

/// Sentences of a paragraph: ends at `.`, `!`, `?` or `…` (with any closing quotes or
/// brackets) followed by whitespace, and at line breaks. Trimmed, empty ones dropped.
fn sentences(paragraph: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = paragraph.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c == '\n' {
            out.push(&paragraph[start..at]);
            start = at + 1;
        } else if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(
                    chars[j].1,
                    '.' | '!' | '?' | '"' | '\'' | '”' | '’' | ')' | ']'
                )
            {
                j += 1;
            }
            if j == chars.len() || chars[j].1.is_whitespace() {
                let end = chars.get(j).map_or(paragraph.len(), |&(at, _)| at);
                out.push(&paragraph[start..end]);
                start = end;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out.push(&paragraph[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Split `s` into parts of at most `max_chars` characters, at the last space that fits, or
/// inside a word only when a window of `max_chars` characters has no space at all.
fn hard_split(s: &str, max_chars: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while char_len(rest) > max_chars {
        // Byte offset just past the first `max_chars` characters.
        let window_end = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(at, _)| at);
        let cut = if rest[window_end..].starts_with(char::is_whitespace) {
            // The window ends exactly at a word boundary.
            window_end
        } else {
            match rest[..window_end].rfind(char::is_whitespace) {
                Some(at) if at > 0 => at,
                _ => window_end,
            }
        };
        out.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    fn check(text: &str, max: usize) -> Vec<String> {
        let chunks = split(text, max);
        for c in &chunks {
            assert!(
                char_len(c) <= max,
                "chunk of {} > {max}: {c:?}",
                char_len(c)
            );
            assert!(!c.trim().is_empty());
        }
        let joined = chunks.join(" ");
        assert_eq!(
            words(&joined),
            words(text),
            "no word lost, none added, order kept"
        );
        chunks
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(check("  Hello world.  ", 100), vec!["Hello world."]);
        assert!(split(" \n\n \n", 100).is_empty());
    }

    #[test]
    fn packs_paragraphs() {
        let text = "First para.\n\nSecond para.\r\n   \r\nThird para that is longer.";
        let chunks = check(text, 30);
        assert_eq!(
            chunks,
            vec!["First para.\n\nSecond para.", "Third para that is longer."]
        );
    }

    #[test]
    fn long_paragraph_splits_at_sentences() {
        let text = "One is here. Two is \"quoted.\" Three? Yes! Four (brackets.) Five… six";
        let chunks = check(text, 20);
        assert_eq!(chunks[0], "One is here.");
        assert_eq!(chunks[1], "Two is \"quoted.\"");
        assert!(chunks.iter().all(|c| !c.starts_with(' ')));
    }

    #[test]
    fn decimals_do_not_end_sentences() {
        assert_eq!(
            sentences("Pi is 3.14 today. Next"),
            vec!["Pi is 3.14 today.", "Next"]
        );
        assert_eq!(sentences("a\nb"), vec!["a", "b"]);
    }

    #[test]
    fn long_sentence_splits_at_spaces_or_anywhere() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda";
        let chunks = check(text, 16);
        assert!(chunks.iter().all(|c| !c.ends_with(' ')));
        let unbroken = "x".repeat(50);
        let chunks = split(&unbroken, 16);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), unbroken);
    }

    #[test]
    fn invariants_hold_on_mixed_text() {
        // Deterministic pseudo-random text: words of varied length, sentences, paragraphs.
        let mut seed: u32 = 7;
        let mut next = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as usize
        };
        let mut text = String::new();
        for _ in 0..400 {
            let word_len = 1 + next() % 14;
            text.extend(std::iter::repeat_n('w', word_len));
            text.push_str(match next() % 12 {
                0 => ". ",
                1 => "?\n",
                2 => ".\n\n",
                _ => " ",
            });
        }
        for max in [20, 57, 200, 1000, 10_000] {
            let chunks = check(&text, max);
            assert!(!chunks.is_empty());
        }
    }

    #[test]
    fn counts_characters_not_bytes() {
        let text = "ééééé ééééé ééééé";
        let chunks = check(text, 11);
        assert_eq!(chunks, vec!["ééééé ééééé", "ééééé"]);
    }
}
