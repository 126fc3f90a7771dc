//! Finds the line of a field in block-style YAML, for errors found after parsing.
//!
//! Parse errors carry their position from the YAML parser. Errors found by validation (a zero
//! limit, an empty address list) only know the field's path, such as
//! `rate_limiter.windows[1].duration`; this walks the text's indentation to find it. For flow
//! style (`[..]`, `{..}`) it settles for the nearest enclosing field it can find.

/// One syntactic mark on a line: a sequence dash or a mapping key.
#[derive(Debug)]
struct Mark<'a> {
    line: usize,
    column: usize,
    key: Option<&'a str>,
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(field: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            if let Ok(index) = rest[open + 1..open + close].parse() {
                out.push(Segment::Index(index));
            }
            rest = &rest[open + close + 1..];
        }
    }
    out
}

fn marks(text: &str) -> Vec<Mark<'_>> {
    let mut out = Vec::new();
    for (line, raw) in text.lines().enumerate() {
        let mut column = raw.len() - raw.trim_start().len();
        let mut rest = raw.trim_start();
        if rest.starts_with('#') || rest.is_empty() {
            continue;
        }
        while rest == "-" || rest.starts_with("- ") {
            out.push(Mark {
                line,
                column,
                key: None,
            });
            let after = rest[1..].trim_start();
            column += rest.len() - after.len();
            rest = after;
        }
        if let Some(key) = mapping_key(rest) {
            out.push(Mark {
                line,
                column,
                key: Some(key),
            });
        }
    }
    out
}

/// `name:` or `"name":` followed by a space or the end of the line.
fn mapping_key(content: &str) -> Option<&str> {
    let content = content.trim_start();
    let colon = content.find(':')?;
    let after = &content[colon + 1..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    let key = content[..colon]
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then_some(key)
}

/// The 1-based line and column of `field` in `text`, or of its nearest enclosing field.
pub(crate) fn find(text: &str, field: &str) -> Option<(usize, usize)> {
    walk(text, field).map(|(line, column, _)| (line, column))
}

/// The 1-based line and column of `field` itself, if the text spells it in block style.
pub(crate) fn find_exact(text: &str, field: &str) -> Option<(usize, usize)> {
    walk(text, field)
        .filter(|&(_, _, exact)| exact)
        .map(|(line, column, _)| (line, column))
}

fn walk(text: &str, field: &str) -> Option<(usize, usize, bool)> {
    let marks = marks(text);
    let mut start = 0;
    let mut scope_column: Option<usize> = None;
    let mut found = None;
    let segments = segments(field);
    let mut matched = 0;
    for segment in &segments {
        let scope: Vec<(usize, &Mark<'_>)> = marks
            .iter()
            .enumerate()
            .skip(start)
            // A block sequence may sit at its key's own indentation (`key:` then `- item`).
            .take_while(|(_, m)| {
                scope_column.is_none_or(|c| {
                    m.column > c
                        || (m.column == c
                            && m.key.is_none()
                            && matches!(segment, Segment::Index(_)))
                })
            })
            .collect();
        let Some(child_column) = scope.first().map(|(_, m)| m.column) else {
            break;
        };
        let mut level = scope.iter().filter(|(_, m)| m.column == child_column);
        let hit = match segment {
            Segment::Key(name) => level.find(|(_, m)| m.key == Some(*name)),
            Segment::Index(index) => level.filter(|(_, m)| m.key.is_none()).nth(*index),
        };
        let Some(&(position, mark)) = hit else {
            break;
        };
        found = Some((mark.line + 1, mark.column + 1));
        matched += 1;
        start = position + 1;
        scope_column = Some(mark.column);
    }
    found.map(|(line, column)| (line, column, matched == segments.len()))
}

#[cfg(test)]
mod tests {
    use super::{find, find_exact};

    const YAML: &str = "\
rate_limiter:
  redis:
    addrs: [a:1, b:2]
    timeout: 100ms
  windows:
    - max_requests: 100
      duration: 1m
    -   max_requests: 0
        duration: 1h
  cache:
    # a comment
    ttl: 500ms
";

    /// A sequence whose items are written flush with its key.
    const FLUSH: &str = "rate_limiter:\n  windows:\n  - max_requests: 10\n    duration: 1m\n  - max_requests: 0\n    duration: 1h\n  cache:\n    ttl: 1s\n";

    /// Items indented under their key ([`YAML`]) or flush with it ([`FLUSH`]).
    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let table = [
            (YAML, "rate_limiter.redis.timeout", (4, 5)),
            (YAML, "rate_limiter.windows[0].duration", (7, 7)),
            (YAML, "rate_limiter.windows[1].max_requests", (8, 9)),
            (YAML, "rate_limiter.windows[1]", (8, 5)),
            (YAML, "rate_limiter.cache.ttl", (12, 5)),
            (FLUSH, "rate_limiter.windows[1].max_requests", (5, 5)),
            (FLUSH, "rate_limiter.windows[0].duration", (4, 5)),
            (FLUSH, "rate_limiter.cache.ttl", (8, 5)),
        ];
        for (yaml, field, place) in table {
            assert_eq!(find(yaml, field), Some(place), "{field} in {yaml:?}");
        }
    }

    #[test]
    fn falls_back_to_the_enclosing_field() {
        // An item of a flow sequence, and a section not written: no place of their own.
        for (field, enclosing) in [
            ("rate_limiter.redis.addrs[1]", (3, 5)),
            ("rate_limiter.fallback.mode", (1, 1)),
        ] {
            assert_eq!(find(YAML, field), Some(enclosing), "{field}");
            assert_eq!(find_exact(YAML, field), None, "{field}");
        }
        assert_eq!(find("", "rate_limiter"), None);
        assert_eq!(find_exact(YAML, "rate_limiter.cache.ttl"), Some((12, 5)));
    }
}
