//! Output: tables on a terminal, the API's JSON otherwise (or as asked with `--output`), YAML
//! on request. Colour only on a terminal and never with `NO_COLOR`. Text that came from the
//! backend (hostnames, labels, output of verbs in tables) has control characters replaced, so
//! an agent cannot send escape sequences to the operator's terminal through a table.

use std::io::{IsTerminal as _, Write as _};

use serde_json::Value;

use crate::cli::Format;
use crate::Error;

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// The chosen format.
    pub format: Format,
    /// Whether colour may be used.
    pub color: bool,
    /// Whether the format was asked for explicitly.
    pub explicit: bool,
}

impl Out {
    /// Decides from `--output`, whether stdout is a terminal, and `NO_COLOR`.
    pub fn decide(asked: Option<Format>, stdout_tty: bool, no_color: bool) -> Out {
        let format = asked.unwrap_or(if stdout_tty {
            Format::Table
        } else {
            Format::Json
        });
        Out {
            format,
            color: stdout_tty && !no_color && format == Format::Table,
            explicit: asked.is_some(),
        }
    }

    /// From the real process environment.
    pub fn from_env(asked: Option<Format>) -> Out {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Out::decide(asked, std::io::stdout().is_terminal(), no_color)
    }

    /// Prints `value` as JSON or YAML (for tables, the caller renders its own).
    pub fn data(&self, value: &Value) -> Result<(), Error> {
        let text = match self.format {
            Format::Yaml => crate::yaml::to_string(value),
            Format::Json | Format::Table => {
                let mut s =
                    serde_json::to_string_pretty(value).map_err(|e| Error::Local(e.to_string()))?;
                s.push('\n');
                s
            }
        };
        print(&text)
    }

    /// Prints `value` as JSON/YAML, or as the table `table` builds when the format is table.
    pub fn show(&self, value: &Value, table: impl FnOnce(&Value) -> String) -> Result<(), Error> {
        match self.format {
            Format::Table => print(&table(value)),
            _ => self.data(value),
        }
    }

    /// `text` in `color` (an SGR code such as "32") when colour is on.
    pub fn paint(&self, text: &str, color: &str) -> String {
        if self.color {
            format!("\x1b[{color}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
pub fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Local(format!("writing output: {e}"))),
    }
}

/// Replaces control characters (ESC, CR, ...) so a cell is shown as text.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// A value as a table cell: strings bare, null as "-", the rest as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// Renders rows under headers, columns padded to the widest cell. Cells may carry colour
/// escapes made by [`Out::paint`]; widths count only visible characters.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(visible_len(c));
            }
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    for row in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                let w = widths.get(i).copied().unwrap_or(0);
                line.extend(std::iter::repeat_n(' ', w - visible_len(c).min(w) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// Labels as `k=v,k=v`.
pub fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => clean(
            &m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => "-".to_owned(),
    }
}

/// Writes a progress line to stderr: on a terminal over the previous one, else one per line.
pub fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_colour_follow_the_terminal() {
        let o = Out::decide(None, true, false);
        assert_eq!((o.format, o.color), (Format::Table, true));
        let o = Out::decide(None, false, false);
        assert_eq!((o.format, o.color), (Format::Json, false));
        let o = Out::decide(None, true, true);
        assert!(!o.color, "NO_COLOR");
        let o = Out::decide(Some(Format::Table), false, false);
        assert_eq!((o.format, o.color), (Format::Table, false));
    }

    #[test]
    fn tables_align_and_show_hostile_text_as_text() {
        let o = Out::decide(None, true, false);
        let rows = vec![
            vec!["a".to_owned(), o.paint("connected", "32")],
            vec![clean("evil\x1b[2J"), "offline".to_owned()],
        ];
        let t = table(&["id", "state"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID        STATE");
        assert!(lines[2].starts_with("evil\u{fffd}[2J  offline"), "{t}");
        assert!(!lines[2].contains('\x1b'));
    }
}
