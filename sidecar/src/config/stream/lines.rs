//! Splits the stream body into NDJSON lines, whatever the HTTP/2 framing: one DATA frame may
//! carry half a line, or several lines and the start of the next.

use bytes::{Buf, Bytes, BytesMut};

/// A line longer than the limit: the peer is not speaking the protocol (or a snapshot grew past
/// what the sidecar accepts).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stream line exceeds {limit} bytes")]
pub struct LineTooLong {
    pub limit: usize,
}

pub struct LineSplitter {
    buf: BytesMut,
    limit: usize,
}

impl LineSplitter {
    /// `limit`: the longest line accepted, in bytes (without its newline).
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Adds one chunk of the body and returns the lines it completed, without their `\n` (or
    /// `\r\n`). Blank lines are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, LineTooLong> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            self.append(&rest[..newline])?;
            let mut line = self.buf.split().freeze();
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line);
            }
            rest = &rest[newline + 1..];
        }
        self.append(rest)?;
        Ok(lines)
    }

    /// Bytes of an unfinished line held back.
    pub fn pending(&self) -> usize {
        self.buf.remaining()
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), LineTooLong> {
        // The limit counts a trailing `\r` of a CRLF line too; one byte is no matter.
        if self.buf.len() + bytes.len() > self.limit + 1 {
            self.buf.clear();
            return Err(LineTooLong { limit: self.limit });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(lines: Vec<Bytes>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn one_line_per_chunk() {
        let mut s = LineSplitter::new(100);
        assert_eq!(strings(s.push(b"{\"a\":1}\n").unwrap()), ["{\"a\":1}"]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_line_split_across_chunks() {
        let mut s = LineSplitter::new(100);
        assert!(s.push(b"{\"type\":").unwrap().is_empty());
        assert!(s.push(b"\"heart").unwrap().is_empty());
        assert_eq!(s.pending(), 14);
        assert_eq!(
            strings(s.push(b"beat\"}\n").unwrap()),
            [r#"{"type":"heartbeat"}"#]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn several_lines_in_one_chunk_and_the_start_of_the_next() {
        let mut s = LineSplitter::new(100);
        assert_eq!(strings(s.push(b"one\ntwo\nthr").unwrap()), ["one", "two"]);
        assert_eq!(strings(s.push(b"ee\n").unwrap()), ["three"]);
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let body = b"{\"a\":1}\r\n\n{\"b\":22}\n{\"c\":333}\n";
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut s = LineSplitter::new(100);
                let mut lines = Vec::new();
                for chunk in [&body[..i], &body[i..j], &body[j..]] {
                    lines.extend(strings(s.push(chunk).unwrap()));
                }
                assert_eq!(
                    lines,
                    [r#"{"a":1}"#, r#"{"b":22}"#, r#"{"c":333}"#],
                    "{i} {j}"
                );
                assert_eq!(s.pending(), 0);
            }
        }
    }

    #[test]
    fn blank_lines_and_crlf_are_ignored() {
        let mut s = LineSplitter::new(100);
        assert_eq!(strings(s.push(b"\n\r\n  \nx\r\n").unwrap()), ["x"]);
    }

    #[test]
    fn a_line_past_the_limit_is_an_error_even_split() {
        let mut s = LineSplitter::new(8);
        assert_eq!(strings(s.push(b"12345678\n").unwrap()), ["12345678"]);
        assert!(s.push(b"12345").unwrap().is_empty());
        assert_eq!(s.push(b"67890"), Err(LineTooLong { limit: 8 }));
        assert_eq!(s.pending(), 0);
    }
}
