//! A Server-Sent Events parser (the WHATWG rules meshctl needs): fields `id`, `event`, `data`
//! (several `data` lines join with `\n`), comments (`: keep-alive`) ignored, `\n`, `\r\n` or
//! `\r` line ends, an event dispatched at a blank line. Fed bytes in whatever chunks the
//! network gives, it keeps at most [`MAX_LINE`] bytes of an unfinished line.

/// Longest line kept; a longer one is an error (the stream is not what we expect).
pub const MAX_LINE: usize = 1024 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `id:` (the last one seen in the stream, as the spec says).
    pub id: Option<String>,
    /// `event:` (default "message").
    pub event: String,
    /// The joined `data:` lines.
    pub data: String,
}

/// Why the stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`].
    #[error("event stream line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Incremental parser.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    last_id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// A new parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(e) = self.line_done(&line) {
                        out.push(e);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| Event {
                id: self.last_id.clone(),
                event: event.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b": keep-alive\n\nid: 7\nevent: agent_connected\ndata: {\"agent_id\":\"a\"}\n\n\
id: 8\r\nevent: job_progress\r\ndata: {\"job_id\":\"j\",\r\ndata: \"finished\":true}\r\n\r\n";

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    #[test]
    fn events_comments_and_multiline_data() {
        let events = all(&[STREAM]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].event, "agent_connected");
        assert_eq!(events[0].data, "{\"agent_id\":\"a\"}");
        assert_eq!(events[1].event, "job_progress");
        assert_eq!(events[1].data, "{\"job_id\":\"j\",\n\"finished\":true}");
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let whole = all(&[STREAM]);
        for split in 0..STREAM.len() {
            let (a, b) = STREAM.split_at(split);
            assert_eq!(all(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_ids_carry_over() {
        let events = all(&[b"id: 3\nevent: x\n\ndata: d\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id.as_deref(), Some("3"));
        assert_eq!(events[0].event, "message");
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = Parser::new();
        let big = vec![b'x'; MAX_LINE + 1];
        assert_eq!(p.push(&big), Err(SseError::LineTooLong));
    }
}
