//! A good config file deserialized a few hundred `[[cluster]]` tables at a
//! time, so that reading a large file does not hold all of it parsed at once.
//!
//! `toml::from_str` lexes the whole text into a token vector, turns that
//! into an event vector and builds a document tree before serde sees a
//! value: about 25 bytes of transient memory for every byte of text. At
//! 10,000 clusters (a 1.7 MB file) that was ~40 MB, which set the daemon's
//! peak RSS at every config edit (docs/benchmarks.md). Here the text is
//! lexed once, streaming, to find its top-level table headers; each
//! `[[cluster]]` table with its `[cluster.…]` sub-tables is a *block*.
//! The rest of the file (every other table, the root keys) is deserialized
//! on its own, then the blocks a chunk of about [`CHUNK_BYTES`] at a time.
//!
//! Each piece is deserialized **at its own offsets**: a buffer as long as
//! the text holds spaces everywhere except the piece, so every span (and so
//! every `file:line:col` the validator reports) is the one the whole file
//! would give, and the spaces are plain TOML whitespace. A piece that does
//! not deserialize, or a file whose pieces could hide an error of the whole
//! (a root `cluster` key besides `[[cluster]]` tables), returns `None`: the
//! caller then decodes the whole file the thorough way, which finds and
//! reports every problem with its position.

use std::ops::Range;

use toml_parser::lexer::TokenKind;

use super::file::FileConfig;

/// Text deserialized at once, at most (one block may be longer): 64 KiB is
/// ~400 clusters, ~1.5 MB of transient parser memory.
const CHUNK_BYTES: usize = 64 * 1024;

/// A token: its kind and where it is.
type Lexed = (TokenKind, Range<usize>);

/// What a top-level table header opens.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Header {
    /// `[[cluster]]`: a new cluster block.
    Cluster,
    /// `[cluster.…]` or `[[cluster.…]]`: part of the current block.
    ClusterPart,
    /// Any other table.
    Other,
}

/// The file's top-level layout: the ranges of its cluster blocks, in order.
struct Layout {
    blocks: Vec<Range<usize>>,
    /// A root key named `cluster` (e.g. `cluster = [...]`): the pieces
    /// could not tell whether it clashes with the `[[cluster]]` tables.
    root_cluster_key: bool,
}

/// Deserializes a good file piece by piece; `None` when any piece has a
/// problem (the caller decodes the whole file to report it).
pub(crate) fn from_str(text: &str) -> Option<FileConfig> {
    let layout = layout(text);
    if layout.blocks.is_empty() {
        return toml::from_str(text).ok();
    }
    if layout.root_cluster_key {
        return None;
    }
    let mut buf = text.as_bytes().to_vec();
    for block in &layout.blocks {
        buf[block.clone()].fill(b' ');
    }
    let mut file: FileConfig = toml::from_str(std::str::from_utf8(&buf).ok()?).ok()?;
    if !file.cluster.is_empty() {
        return None;
    }
    // Now spaces everywhere, then one chunk of blocks at a time.
    buf.fill(b' ');
    file.cluster.reserve_exact(layout.blocks.len());
    let mut blocks = layout.blocks.iter().peekable();
    while blocks.peek().is_some() {
        let mut chunk = Vec::new();
        let mut size = 0;
        while let Some(block) =
            blocks.next_if(|b| chunk.is_empty() || size + b.len() <= CHUNK_BYTES)
        {
            size += block.len();
            chunk.push(block.clone());
        }
        for block in &chunk {
            buf[block.clone()].copy_from_slice(&text.as_bytes()[block.clone()]);
        }
        let end = chunk.last().map_or(0, |b| b.end);
        let part: FileConfig = toml::from_str(std::str::from_utf8(&buf[..end]).ok()?).ok()?;
        if part.prometheus.is_some()
            || part.defaults.is_some()
            || part.metrics.is_some()
            || part.control.is_some()
            || part.limits.is_some()
            || !part.consumer.is_empty()
        {
            return None;
        }
        file.cluster.extend(part.cluster);
        for block in &chunk {
            buf[block.clone()].fill(b' ');
        }
    }
    Some(file)
}

/// Finds the cluster blocks with one streaming pass of the lexer. A header
/// is a `[` first on its line outside any value (arrays and inline tables
/// may span lines); strings are single tokens, so a `[` inside one is not
/// seen. Malformed text only makes the pieces fail to deserialize.
fn layout(text: &str) -> Layout {
    let mut blocks: Vec<Range<usize>> = Vec::new();
    let mut root_cluster_key = false;
    let mut in_block = false;
    let mut seen_header = false;
    // Open `[`/`{` of values; at the start of a line; inside a header line.
    let mut depth = 0usize;
    let mut line_start = true;
    let mut header: Option<(usize, Vec<Lexed>)> = None;
    let close = |blocks: &mut Vec<Range<usize>>, in_block: &mut bool, at: usize| {
        if *in_block {
            if let Some(last) = blocks.last_mut() {
                last.end = at;
            }
            *in_block = false;
        }
    };
    for token in toml_parser::Source::new(text).lex() {
        let kind = token.kind();
        let span = token.span().start()..token.span().end();
        if let Some((_, tokens)) = header.as_mut() {
            if !matches!(kind, TokenKind::Newline | TokenKind::Eof) {
                tokens.push((kind, span));
                continue;
            }
            let (start, tokens) = header.take().expect("in a header");
            match classify(text, &tokens) {
                Header::Cluster => {
                    close(&mut blocks, &mut in_block, start);
                    blocks.push(start..text.len());
                    in_block = true;
                }
                Header::ClusterPart if in_block => {}
                Header::ClusterPart | Header::Other => close(&mut blocks, &mut in_block, start),
            }
            line_start = true;
            continue;
        }
        match kind {
            TokenKind::Newline => line_start = depth == 0,
            TokenKind::Whitespace | TokenKind::Comment | TokenKind::Eof => {}
            TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                seen_header = true;
                header = Some((span.start, vec![(kind, span)]));
            }
            _ => {
                if line_start && depth == 0 && !seen_header && key_is_cluster(text, kind, &span) {
                    root_cluster_key = true;
                }
                line_start = false;
                match kind {
                    TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                    TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                        depth = depth.saturating_sub(1)
                    }
                    _ => {}
                }
            }
        }
    }
    close(&mut blocks, &mut in_block, text.len());
    Layout {
        blocks,
        root_cluster_key,
    }
}

/// What the tokens of one header line (from its first `[`) open.
fn classify(text: &str, tokens: &[Lexed]) -> Header {
    let mut rest = tokens
        .iter()
        .filter(|(kind, _)| !matches!(kind, TokenKind::Whitespace));
    rest.next(); // the first `[`
    let mut next = rest.next();
    let array = matches!(next, Some((TokenKind::LeftSquareBracket, _)));
    if array {
        next = rest.next();
    }
    let Some((kind, span)) = next else {
        return Header::Other;
    };
    if !key_is_cluster(text, *kind, span) {
        return Header::Other;
    }
    match rest.next() {
        Some((TokenKind::RightSquareBracket, _)) if array => Header::Cluster,
        _ => Header::ClusterPart,
    }
}

/// Whether a key token is `cluster`, bare or quoted.
fn key_is_cluster(text: &str, kind: TokenKind, span: &Range<usize>) -> bool {
    // An unterminated string is a token too (`'﹔`): strip the quotes as
    // characters, never slice by byte counts.
    let Some(raw) = text.get(span.clone()) else {
        return false;
    };
    let quoted = |quote: char| {
        raw.strip_prefix(quote)
            .and_then(|r| r.strip_suffix(quote))
            .is_some_and(|key| key == "cluster")
    };
    match kind {
        TokenKind::Atom => raw == "cluster",
        TokenKind::BasicString => quoted('"'),
        TokenKind::LiteralString => quoted('\''),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces give exactly what the whole file gives, spans included.
    fn same_as_whole(text: &str) {
        let whole: FileConfig = toml::from_str(text).expect("a good file");
        let pieces = from_str(text).expect("pieces deserialize");
        assert_eq!(format!("{pieces:?}"), format!("{whole:?}"), "for:\n{text}");
    }

    fn cluster(i: usize) -> String {
        format!(
            "[[cluster]]\nname = \"c{i}\"\nservice_account = \"ns/sa\" # [x]\naudiences = [\n  \"a\",\n  \"[b]\",\n]\n\
             [cluster.credentials]\nkubeconfig = \"/k/{i}\"\n\n"
        )
    }

    #[test]
    fn pieces_match_the_whole_file_with_tables_between_and_after_clusters() {
        let mut text = String::from(
            "\u{feff}# head\n[prometheus]\nurl = \"http://p:9090\"\n\n[defaults]\nexpiration = \"2h\"\n",
        );
        for i in 0..1500 {
            text.push_str(&cluster(i));
            if i == 300 {
                text.push_str("[[consumer]]\nname = \"vm\"\nclusters = [\"c1\",\n  \"c2\"]\n");
            }
            if i == 700 {
                text.push_str("[limits]\nconcurrent_requests = 4\n");
            }
        }
        text.push_str("  [ control ]\nsocket = \"/run/x.sock\"\n[metrics]\nlisten = \"\"");
        assert!(text.len() > 3 * CHUNK_BYTES, "spans several chunks");
        let layout = layout(&text);
        assert_eq!(layout.blocks.len(), 1500);
        same_as_whole(&text);
    }

    #[test]
    fn an_unterminated_string_before_a_multibyte_character_is_no_panic() {
        for text in [
            "'\u{fe54}",
            "\"\u{fe55}",
            "[['\u{fe54}",
            "x = '\u{fe54}\n[[cluster]]\n",
        ] {
            let _ = layout(text);
            let _ = from_str(text);
        }
    }

    #[test]
    fn quoted_and_spaced_headers_and_multiline_strings_are_understood() {
        let text = "[[ \"cluster\" ]]\nname = \"a\"\n['cluster'.credentials]\nkubeconfig = \"\"\"\n[[cluster]]\n\"\"\"\n\
                    [[cluster]]\r\nname = \"b\"\r\n[defaults]\r\ntoken_dir = '/t'\r\n";
        let layout = layout(text);
        assert_eq!(layout.blocks.len(), 2, "{:?}", layout.blocks);
        same_as_whole(text);
    }

    #[test]
    fn a_file_without_clusters_is_read_whole() {
        same_as_whole("[defaults]\nexpiration = \"2h\"\n");
        same_as_whole("");
    }

    #[test]
    fn files_whose_pieces_could_hide_an_error_are_left_to_the_whole_file() {
        for text in [
            // A root key and tables for the same array.
            "cluster = []\n[[cluster]]\nname = \"a\"\n",
            // A table defined twice, once on each side of the clusters.
            "[defaults]\n[[cluster]]\nname = \"a\"\n[defaults]\n",
            // A sub-table before any [[cluster]].
            "[cluster.credentials]\n[[cluster]]\nname = \"a\"\n",
            // [cluster] after [[cluster]].
            "[[cluster]]\nname = \"a\"\n[cluster]\nname = \"b\"\n",
            // A syntax error inside one cluster.
            "[[cluster]]\nname = \"a\n[[cluster]]\nname = \"b\"\n",
            // An unknown key.
            "[[cluster]]\nnmae = \"a\"\n",
        ] {
            assert!(toml::from_str::<FileConfig>(text).is_err(), "{text}");
            assert!(from_str(text).is_none(), "pieces accepted:\n{text}");
        }
    }
}
