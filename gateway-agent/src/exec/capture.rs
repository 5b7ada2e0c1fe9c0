//! Capturing a child's stdout or stderr up to a cap, while draining the rest so the child never
//! blocks on a full pipe.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Bytes kept from one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// At most the cap.
    pub bytes: Vec<u8>,
    /// More arrived than the cap allowed; the rest was read and dropped.
    pub truncated: bool,
    cap: usize,
}

impl Captured {
    /// An empty capture keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Captured {
            bytes: Vec::new(),
            truncated: false,
            cap,
        }
    }

    /// Keeps what fits of `chunk`.
    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        let take = room.min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..take]);
        if take < chunk.len() {
            self.truncated = true;
        }
    }

    /// The bytes as text, invalid UTF-8 replaced; a character cut in half by the cap is dropped
    /// rather than shown as a replacement character.
    pub fn text(&self) -> String {
        let bytes = if self.truncated {
            &self.bytes[..complete_prefix(&self.bytes)]
        } else {
            &self.bytes[..]
        };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Length of `bytes` without a trailing, incomplete UTF-8 sequence.
fn complete_prefix(bytes: &[u8]) -> usize {
    // A UTF-8 sequence is at most 4 bytes: look for its lead byte among the last 4.
    for back in 1..=bytes.len().min(4) {
        let i = bytes.len() - back;
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let needed = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return bytes.len(), // not UTF-8 anyway; leave it to the lossy decoder
        };
        return if back < needed { i } else { bytes.len() };
    }
    bytes.len()
}

/// Reads `reader` to its end (or until `stop` resolves), keeping at most `cap` bytes.
pub async fn capture<R>(reader: Option<R>, cap: usize, stop: impl Future<Output = ()>) -> Captured
where
    R: AsyncRead + Unpin,
{
    let mut out = Captured::new(cap);
    let Some(mut reader) = reader else {
        return out;
    };
    let mut stop = std::pin::pin!(stop);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            biased;
            read = reader.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => out.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            },
            () = &mut stop => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[test]
    fn the_cap_keeps_the_head_and_flags_the_rest() {
        let mut c = Captured::new(5);
        c.push(b"abc");
        assert!(!c.truncated);
        c.push(b"defg");
        assert_eq!(c.bytes, b"abcde");
        assert!(c.truncated);
        c.push(b"more");
        assert_eq!(c.bytes, b"abcde");
        assert_eq!(c.text(), "abcde");
    }

    #[test]
    fn an_exact_fit_is_not_truncated() {
        let mut c = Captured::new(4);
        c.push(b"abcd");
        assert!(!c.truncated);
        c.push(b"");
        assert!(!c.truncated);
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let mut c = Captured::new(4);
        c.push("ab€".as_bytes()); // € is 3 bytes: only 2 fit
        assert!(c.truncated);
        assert_eq!(c.text(), "ab");
        let mut c = Captured::new(5);
        c.push("ab€x".as_bytes());
        assert_eq!(c.text(), "ab€");
        // Invalid bytes that were not cut are replaced, not dropped.
        let mut c = Captured::new(10);
        c.push(b"a\xffb");
        assert_eq!(c.text(), "a\u{FFFD}b");
    }

    #[tokio::test]
    async fn capture_drains_past_the_cap() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            // Far more than the pipe holds: this only finishes if the reader keeps draining.
            for _ in 0..256 {
                tx.write_all(&[b'x'; 1024]).await.unwrap();
            }
        });
        let out = capture(Some(rx), 100, std::future::pending()).await;
        writer.await.unwrap();
        assert_eq!(out.bytes.len(), 100);
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn stop_ends_a_capture_whose_writer_never_closes() {
        let (_tx, rx) = tokio::io::duplex(64);
        let out = capture(Some(rx), 10, async {}).await;
        assert!(out.bytes.is_empty());
        assert!(!out.truncated);
    }
}
