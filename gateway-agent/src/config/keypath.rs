//! Maps a TOML deserialisation error back to the dotted key it is about.
//!
//! The `toml` crate reports a byte span, not a key path, and prints a multi-line snippet. An
//! operator wants one line: `gateway.toml: outbound.server_pins: invalid type ...`. This walks
//! back from the span to the enclosing `[table]`/`[[array]]` header and the `key =` it sits in.
//! It is a best-effort reading of the source text; when it finds nothing the key is `(top level)`.

/// `(key, one-line message)` for a TOML error in `text`.
pub(super) fn describe_toml_error(
    text: &str,
    error: &toml::de::Error,
    with_position: bool,
) -> (String, String) {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return ("(top level)".to_owned(), message);
    };
    let key = key_at(text, span.start).unwrap_or_else(|| "(top level)".to_owned());
    if !with_position {
        return (key, message);
    }
    let before = &text[..char_floor(text, span.start)];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (key, format!("{message} (line {line}, column {column})"))
}

/// The dotted key path at byte `offset` of `text`.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = char_floor(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let lines: Vec<&str> = text[..line_start].lines().collect();
    let current_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let current = &text[line_start..current_end];

    if let Some(header) = header_of(current) {
        return Some(indexed(header, &lines, current));
    }

    // The `key =` this offset belongs to: on this line, or on an earlier line of a multi-line
    // value, stopping at the table header.
    let mut key = None;
    let mut header = None;
    let candidates = std::iter::once((current, Some(offset - line_start)))
        .chain(lines.iter().rev().map(|l| (*l, None)));
    for (line, column) in candidates {
        if let Some(h) = header_of(line) {
            header = Some((h, line));
            break;
        }
        if key.is_none() {
            if let Some((k, value_start)) = leading_key(line) {
                let mut path = k;
                let inner = column
                    .filter(|col| *col >= value_start)
                    .and_then(|col| inline_key(&line[value_start..], col - value_start));
                if let Some(inner) = inner {
                    path = format!("{path}.{inner}");
                }
                key = Some(path);
            }
        }
    }
    let prefix = header.map(|(h, line)| {
        let before: Vec<&str> = lines
            .iter()
            .take_while(|l| !std::ptr::eq(**l, line))
            .copied()
            .collect();
        indexed(h, &before, line)
    });
    match (prefix, key) {
        (Some(p), Some(k)) => Some(format!("{p}.{k}")),
        (Some(p), None) => Some(p),
        (None, k) => k,
    }
}

/// The largest char boundary of `text` at or before `offset`.
fn char_floor(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// `verbs[2]` for the third `[[verbs]]`, `outbound` for `[outbound]`.
fn indexed(name: &str, lines_before: &[&str], header_line: &str) -> String {
    if !header_line.trim_start().starts_with("[[") {
        return name.to_owned();
    }
    let index = lines_before
        .iter()
        .filter(|l| l.trim_start().starts_with("[[") && header_of(l) == Some(name))
        .count();
    format!("{name}[{index}]")
}

/// The table name of a `[name]` or `[[name]]` line.
fn header_of(line: &str) -> Option<&str> {
    let t = line.trim();
    if !t.starts_with('[') {
        return None;
    }
    let inner = t.trim_start_matches('[');
    let end = inner.find(']')?;
    let name = inner[..end].trim();
    (!name.is_empty()).then_some(name)
}

/// `(key, byte offset after '=')` of a `key = value` line; dotted keys are normalised.
fn leading_key(line: &str) -> Option<(String, usize)> {
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    let key_len = trimmed
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')))
        .unwrap_or(trimmed.len());
    let after = &trimmed[key_len..];
    if !after.starts_with('=') || after.starts_with("==") {
        return None;
    }
    let parts: Vec<&str> = trimmed[..key_len].split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty() || p.contains(' ')) {
        return None;
    }
    Some((parts.join("."), indent + key_len + 1))
}

/// Inside an inline table value, the last `name =` that starts at or before `column`.
fn inline_key(value: &str, column: usize) -> Option<String> {
    let mut found = None;
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i <= column {
        let c = bytes[i] as char;
        if c == '{' || c == ',' {
            let rest = &value[i + 1..];
            let t = rest.trim_start();
            let start = i + 1 + (rest.len() - t.len());
            let len = t
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
                .unwrap_or(t.len());
            if len > 0 && t[len..].trim_start().starts_with('=') && start <= column {
                found = Some(t[..len].to_owned());
            }
        }
        if c == '"' {
            // Skip string contents so `,` or `{` inside a pattern is not mistaken for a key.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::key_at;

    fn at(text: &str, needle: &str) -> Option<String> {
        key_at(text, text.find(needle).unwrap_or(0))
    }

    #[test]
    fn finds_table_and_key() {
        let text = "[agent]\nid = \"a\"\n\n[outbound]\n# c\nserver_pins = [\n  \"x\",\n  3,\n]\n";
        assert_eq!(at(text, "\"a\"").as_deref(), Some("agent.id"));
        assert_eq!(at(text, "3,").as_deref(), Some("outbound.server_pins"));
        assert_eq!(at(text, "[outbound]").as_deref(), Some("outbound"));
    }

    #[test]
    fn never_panics_at_any_offset() {
        let text =
            "[agent]\nid = \"é\" # ü\n[[verbs]]\nparams.x = { type = \"ß\", a = [1,\n2] }\n[";
        for offset in 0..text.len() + 3 {
            let _ = key_at(text, offset);
        }
    }

    #[test]
    fn indexes_arrays_of_tables_and_inline_tables() {
        let text = "[[verbs]]\nname = \"a\"\n[[verbs]]\nname = \"b\"\n\
                    params.user = { type = \"strin\", pattern = \"[a,b]{1}\", bogus = 1 }\n";
        assert_eq!(at(text, "\"b\"").as_deref(), Some("verbs[1].name"));
        assert_eq!(
            at(text, "\"strin\"").as_deref(),
            Some("verbs[1].params.user.type")
        );
        assert_eq!(
            at(text, "bogus").as_deref(),
            Some("verbs[1].params.user.bogus")
        );
    }
}
