//! What the HTTP/2 layer answers on its own, read off the frames the server writes.
//!
//! h2 refuses some streams without ever handing them to hyper, so no service (and no audit
//! record) sees them: a stream past `SETTINGS_MAX_CONCURRENT_STREAMS` gets `RST_STREAM
//! REFUSED_STREAM`, and a header block over the HTTP/2 layer's size limit gets a `431` HEADERS
//! frame followed by `RST_STREAM PROTOCOL_ERROR`. The listener feeds every byte it writes on an
//! HTTP/2 connection (after TLS) to a [`FrameScanner`], which reads only the 9-byte frame
//! headers and the 4-byte RST_STREAM payloads, and reports those refusals.
//!
//! The 431 is recognised by its shape: a HEADERS frame that ends its stream, then
//! `RST_STREAM PROTOCOL_ERROR` on that stream with nothing in between. A response hyper sends
//! is never reset with PROTOCOL_ERROR once it has ended the stream (hyper resets an unread
//! body with NO_ERROR, which closes the stream). Other `PROTOCOL_ERROR` resets (a malformed
//! header block, a frame out of place) are protocol errors without a request.

use std::collections::VecDeque;

/// HTTP/2 frame header length.
const HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
/// Streams remembered as "ended by a HEADERS frame" while waiting for a reset.
const REMEMBERED: usize = 128;

/// A refusal the HTTP/2 layer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// `RST_STREAM REFUSED_STREAM`: past the concurrent stream limit; not processed.
    RefusedStream(u32),
    /// A `431` for a header block over the HTTP/2 layer's limit.
    HeadersTooLarge(u32),
    /// `RST_STREAM PROTOCOL_ERROR` for anything else.
    StreamProtocolError(u32),
}

/// Reads the frames of the server's side of one HTTP/2 connection, in any chunking.
#[derive(Debug, Default)]
pub struct FrameScanner {
    head: [u8; HEADER],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// The RST_STREAM being read: its stream and the error code bytes so far.
    reset: Option<(u32, [u8; 4], usize)>,
    ended_by_headers: VecDeque<u32>,
}

impl FrameScanner {
    /// Reads `bytes` (the next ones written), appending any refusal to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Sent>) {
        while !bytes.is_empty() {
            if let Some((stream, mut code, mut got)) = self.reset.take() {
                let n = (4 - got).min(bytes.len());
                code[got..got + n].copy_from_slice(&bytes[..n]);
                got += n;
                bytes = &bytes[n..];
                if got < 4 {
                    self.reset = Some((stream, code, got));
                } else {
                    self.on_reset(stream, u32::from_be_bytes(code), out);
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER {
                self.have = 0;
                self.on_header();
            }
        }
    }

    fn on_header(&mut self) {
        let h = &self.head;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.skip = len;
        match kind {
            HEADERS if flags & END_STREAM != 0 => {
                if self.ended_by_headers.len() == REMEMBERED {
                    self.ended_by_headers.pop_front();
                }
                self.ended_by_headers.push_back(stream);
            }
            RST_STREAM if len == 4 => {
                self.skip = 0;
                self.reset = Some((stream, [0; 4], 0));
            }
            HEADERS | DATA => {
                self.forget(stream);
            }
            _ => {}
        }
    }

    fn forget(&mut self, stream: u32) -> bool {
        let before = self.ended_by_headers.len();
        self.ended_by_headers.retain(|s| *s != stream);
        self.ended_by_headers.len() != before
    }

    fn on_reset(&mut self, stream: u32, code: u32, out: &mut Vec<Sent>) {
        let after_headers = self.forget(stream);
        match code {
            REFUSED_STREAM => out.push(Sent::RefusedStream(stream)),
            PROTOCOL_ERROR if after_headers => out.push(Sent::HeadersTooLarge(stream)),
            PROTOCOL_ERROR => out.push(Sent::StreamProtocolError(stream)),
            // NO_ERROR, CANCEL, INTERNAL_ERROR...: hyper's own resets of served requests.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> Vec<Sent> {
        let mut scanner = FrameScanner::default();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            scanner.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn refusals_are_found_in_any_chunking_and_served_streams_are_not() {
        let mut wire = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 128]); // SETTINGS
        wire.extend(frame(HEADERS, 0x4, 1, &[0x88])); // a response, not ended
        wire.extend(frame(DATA, 0, 1, &[0; 300]));
        wire.extend(frame(HEADERS, 0x5, 1, &[0xbe])); // trailers end stream 1
        wire.extend(frame(RST_STREAM, 0, 1, &0u32.to_be_bytes())); // hyper: NO_ERROR
        wire.extend(frame(RST_STREAM, 0, 3, &7u32.to_be_bytes())); // refused
        wire.extend(frame(HEADERS, 0x5, 5, &[0x48, 0x03, b'4', b'3', b'1'])); // 431...
        wire.extend(frame(DATA, 0, 7, &[1; 20]));
        wire.extend(frame(RST_STREAM, 0, 5, &1u32.to_be_bytes())); // ...then PROTOCOL_ERROR
        wire.extend(frame(RST_STREAM, 0, 9, &1u32.to_be_bytes())); // malformed request
        wire.extend(frame(0x7, 0, 0, &[0, 0, 0, 9, 0, 0, 0, 0])); // GOAWAY
        let want = vec![
            Sent::RefusedStream(3),
            Sent::HeadersTooLarge(5),
            Sent::StreamProtocolError(9),
        ];
        for chunk in [1, 2, 3, 5, 9, 13, 4096] {
            assert_eq!(scan_in_chunks(&wire, chunk), want, "chunks of {chunk}");
        }
    }
}
