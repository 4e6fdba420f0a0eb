//! Length framing: a 4-byte big-endian length N, then N bytes of payload.
//!
//! The decoder is incremental: bytes may arrive in any split, an incomplete
//! frame is a normal state (`Ok(None)`), and a declared length is checked
//! against the cap as soon as its four bytes are in, before anything is
//! allocated for it. The buffer only ever grows by bytes actually received.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// Default cap on a frame's payload: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Incremental frame decoder over a growable buffer.
///
/// Bytes live in `buf[pos..end]`; `buf[end..]` is room already zeroed, so a
/// read into it costs only the bytes it brings (zeroing fresh room on every
/// read would cost a memset of the whole chunk per call).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first byte not yet consumed.
    pos: usize,
    /// End of the bytes received.
    end: usize,
    max: usize,
}

/// Room kept after the buffer empties; more is given back.
const KEEP: usize = 64 * 1024;

// === impl FrameDecoder ===

impl FrameDecoder {
    /// A decoder that refuses frames above `max` bytes of payload.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            end: 0,
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `r` straight into the buffer, offering at least
    /// `chunk` bytes of room. Returns what `read` returned (0 is EOF).
    pub fn read_from<R: Read>(&mut self, r: &mut R, chunk: usize) -> io::Result<usize> {
        self.reserve(chunk);
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame's payload, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the stream cannot be trusted to be delimited any more;
    /// the caller reports it and closes the connection.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>> {
        let avail = &self.buf[self.pos..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len == 0 {
            return Err(Error::BadFrame(
                "frame of length 0: every frame holds one JSON object of 1 byte or more".into(),
            ));
        }
        if len > self.max {
            let head = [avail[0], avail[1], avail[2], avail[3]];
            if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                // "GET ", "HTTP", "{\"v\"": text where a length belongs.
                return Err(Error::FrameTooLarge(format!(
                    "the peer does not speak dsf: its stream starts with the text {:?} where a frame's 4-byte big-endian length belongs (read as {len} bytes, above max_frame {})",
                    String::from_utf8_lossy(&head),
                    self.max
                )));
            }
            return Err(Error::frame_too_large(len, self.max));
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let start = self.pos + HEADER_LEN;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Gives the buffer back when nothing is buffered and it holds more
    /// than `keep` bytes, so a connection that once received a burst does
    /// not keep its memory while idle.
    pub fn release(&mut self, keep: usize) {
        if self.pos == self.end && self.buf.len() > keep {
            self.buf = Vec::new();
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Capacity held by the buffer, for memory accounting.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room for `n` more bytes after `end`: first by moving the
    /// unconsumed bytes to the front, then by growing.
    fn reserve(&mut self, n: usize) {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            // Give back what a burst of large frames left behind.
            if self.buf.len() > KEEP.max(n) {
                self.buf.truncate(KEEP.max(n));
                self.buf.shrink_to_fit();
            }
        }
        if self.buf.len() - self.end >= n {
            return;
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() - self.end < n {
            // Exactly what is needed: memory is counted by capacity against
            // the reactor's budget, and a doubling would hold twice what
            // was received. Only growth past the largest partial frame yet
            // reallocates.
            let need = self.end + n;
            self.buf.reserve_exact(need - self.buf.len());
            self.buf.resize(need, 0);
        }
    }
}

/// Appends `payload` as one frame to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes; frames are capped far below.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload above 4 GiB");
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A frame being written in place at the end of a buffer: the payload is
/// appended to [`InPlace::buf`], and [`InPlace::finish`] fills in its length,
/// so no payload is built apart and copied.
pub struct InPlace<'a> {
    pub buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> InPlace<'a> {
    /// Starts a frame of about `hint` bytes at the end of `out`.
    pub fn start(out: &'a mut Vec<u8>, hint: usize) -> InPlace<'a> {
        out.reserve(HEADER_LEN + hint);
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        InPlace { buf: out, start }
    }

    /// Writes the payload's length into its header.
    pub fn finish(self) {
        let len = self.buf.len() - self.start - HEADER_LEN;
        let len = u32::try_from(len).expect("frame payload above 4 GiB");
        self.buf[self.start..self.start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

/// `payload` as one frame in a new buffer.
pub fn encode_to_vec(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode(payload, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    fn decode_all(dec: &mut FrameDecoder) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn incomplete_header_and_body_wait_for_more_bytes() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let bytes = encode_to_vec(b"{\"a\":1}");
        dec.push(&bytes[..3]);
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&bytes[3..6]);
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&bytes[6..]);
        assert_eq!(dec.next_frame().unwrap(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn zero_length_is_a_bad_frame() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.next_frame().unwrap_err().code(), ErrorCode::BadFrame);
    }

    #[test]
    fn length_above_cap_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&[0xff, 0xff, 0xff, 0xff]);
        let err = dec.next_frame().unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert!(err.to_string().contains("4294967295"), "{err}");
        // Nothing was reserved for the declared 4 GiB.
        assert!(dec.capacity() < 1024);
    }

    #[test]
    fn text_where_a_length_belongs_is_named_as_a_foreign_protocol() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(b"GET / HTTP/1.1\r\n");
        let err = dec.next_frame().unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert!(err.to_string().contains("does not speak dsf"), "{err}");
        assert!(err.to_string().contains("\"GET \""), "{err}");
    }

    #[test]
    fn frame_of_exactly_the_cap_is_accepted() {
        let mut dec = FrameDecoder::new(8);
        dec.push(&encode_to_vec(b"12345678"));
        assert_eq!(dec.next_frame().unwrap(), Some(&b"12345678"[..]));
    }

    #[test]
    fn read_from_appends_what_was_read() {
        let mut dec = FrameDecoder::new(64);
        let bytes = encode_to_vec(b"hello");
        let mut src = &bytes[..];
        let n = dec.read_from(&mut src, 16 * 1024).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(dec.next_frame().unwrap(), Some(&b"hello"[..]));
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same_frames(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 1..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode(f, &mut wire);
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = FrameDecoder::new(300);
            let mut got = Vec::new();
            for w in points.windows(2) {
                dec.push(&wire[w[0]..w[1]]);
                got.extend(decode_all(&mut dec).unwrap());
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(dec.buffered(), 0);
        }
    }
}
