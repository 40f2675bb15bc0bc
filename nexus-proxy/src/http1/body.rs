//! Response bodies read straight off an upstream connection: a framing decoder that works on
//! a buffer ([`Decoder`], also what `fuzz/` drives), and the body that feeds it from the
//! connection ([`RawBody`]).

use super::client::RawConn;
use super::head::{Framing, ResponseHead, invalid, parse_trailers};
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Where a decoder is in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes left of a `Content-Length` body.
    Length(u64),
    /// Before a chunk-size line.
    Size,
    /// This many bytes left of a chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
    /// Everything until the connection closes.
    Close,
    Done,
}

/// One step of decoding.
#[derive(Debug)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete (whatever follows in the buffer is not this body's).
    End,
    /// More bytes are needed; at the end of the stream, see [`Decoder::at_eof`].
    More,
}

/// Decodes one body framed as [`Framing`] says, from the front of a read buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoder {
    state: State,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still expected, when known.
    fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Take what `buf` holds of the body.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            if self.state == State::Done {
                return Ok(Decoded::End);
            }
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            match &mut self.state {
                State::Length(remaining) | State::Data(remaining) => {
                    let n = (*remaining).min(buf.len() as u64);
                    // `n` fits: it is at most `buf.len()`.
                    let data = buf.split_to(n as usize).freeze();
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = if matches!(self.state, State::Data(_)) { State::DataEnd } else { State::Done };
                    }
                    return Ok(Decoded::Data(data));
                }
                State::Close => return Ok(Decoded::Data(buf.split().freeze())),
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => return Ok(Decoded::More),
                    _ => return Err(invalid("upstream sent an invalid chunk size")),
                },
                State::DataEnd => {
                    let used = if buf.starts_with(b"\r\n") {
                        2
                    } else if buf[0] == b'\n' {
                        1
                    } else if buf[..] == *b"\r" {
                        return Ok(Decoded::More); // half of the CRLF: wait for the rest
                    } else {
                        return Err(invalid("upstream chunk is longer than its size"));
                    };
                    buf.advance(used);
                    self.state = State::Size;
                }
                State::Trailers => {
                    return match parse_trailers(buf)? {
                        None => Ok(Decoded::More),
                        Some(trailers) => {
                            self.state = State::Done;
                            Ok(trailers.map_or(Decoded::End, Decoded::Trailers))
                        }
                    };
                }
                State::Done => unreachable!("handled above"),
            }
        }
    }

    /// The stream ended: `Ok` when that ends the body (a body read until close).
    pub(crate) fn at_eof(&mut self) -> io::Result<()> {
        if self.state == State::Close {
            self.state = State::Done;
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upstream closed the connection before the end of the response body",
        ))
    }
}

/// Most chunks in a request body the lean server reads whole: more go to hyper, so the scan
/// that runs again as each read arrives stays short (a body sent in many small pieces is
/// streamed, as before).
pub(crate) const MAX_LEAN_CHUNKS: usize = 128;

/// What [`lean_chunks`] found after a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeanChunks {
    /// The body is all here: `wire` bytes of chunks, `data` bytes of data in them.
    Whole { wire: usize, data: usize },
    /// So far a body the lean server takes; more bytes are needed.
    Partial,
    /// Not one the lean server reads (too large, too many chunks, or anything but the plain
    /// form below): hyper frames it, or refuses it.
    Other,
}

/// Scan a chunked request body at the start of `buf` without consuming it. Taken only in its
/// plainest form: `1*6HEXDIG CRLF data CRLF` chunks, then `0 CRLF CRLF` (no chunk extensions,
/// no trailer fields, no bare LF), with at most [`MAX_LEAN_CHUNKS`] chunks and
/// [`crate::headers::LEAN_BODY_MAX`] bytes of data. Everything else hyper decides, which is
/// what every chunked request did before.
pub(crate) fn lean_chunks(buf: &[u8]) -> LeanChunks {
    let (mut at, mut data, mut chunks) = (0usize, 0usize, 0usize);
    loop {
        let line = &buf[at..];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 && !line.is_empty() || digits > 6 {
            return LeanChunks::Other;
        }
        match &line[digits..] {
            [] | [b'\r'] => return LeanChunks::Partial,
            [b'\r', b'\n', ..] => {}
            _ => return LeanChunks::Other,
        }
        let size = hex_size(&line[..digits]);
        at += digits + 2;
        if size == 0 {
            return match &buf[at..] {
                [] | [b'\r'] => LeanChunks::Partial,
                [b'\r', b'\n', ..] => LeanChunks::Whole { wire: at + 2, data },
                _ => LeanChunks::Other,
            };
        }
        data += size;
        chunks += 1;
        if data as u64 > crate::headers::LEAN_BODY_MAX || chunks > MAX_LEAN_CHUNKS {
            return LeanChunks::Other;
        }
        let end = at + size;
        match buf.get(end..end + 2) {
            None => return LeanChunks::Partial,
            Some(b"\r\n") => at = end + 2,
            Some(_) => return LeanChunks::Other,
        }
    }
}

/// The data of the chunks [`lean_chunks`] found whole in `wire` (`data` bytes): a slice of
/// it when there is one chunk, else one copy.
pub(crate) fn lean_chunk_data(wire: &Bytes, data: usize) -> Bytes {
    let mut first = None;
    let mut copy: Option<BytesMut> = None;
    let mut at = 0;
    loop {
        let digits = wire[at..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = hex_size(&wire[at..at + digits]);
        at += digits + 2;
        if size == 0 {
            break;
        }
        let piece = at..at + size;
        match (&first, &mut copy) {
            (None, _) => first = Some(piece),
            (Some(one), None) => {
                let mut out = BytesMut::with_capacity(data);
                out.extend_from_slice(&wire[one.clone()]);
                out.extend_from_slice(&wire[piece]);
                copy = Some(out);
            }
            (Some(_), Some(out)) => out.extend_from_slice(&wire[piece]),
        }
        at += size + 2;
    }
    match (copy, first) {
        (Some(out), _) => out.freeze(),
        (None, Some(one)) => wire.slice(one),
        (None, None) => Bytes::new(),
    }
}

/// The value of at most six hex digits (the caller checked they are): a chunk's size.
/// (Not `httparse::parse_chunk_size` nor `usize::from_str_radix`, which take more: the
/// decoder in their place cost a chunked request ~950 instructions more, callgrind.)
fn hex_size(digits: &[u8]) -> usize {
    digits.iter().fold(0, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d.wrapping_sub(b'A').wrapping_add(10),
        };
        n * 16 + usize::from(v)
    })
}

/// A response body read straight off the connection.
#[derive(Debug)]
pub(crate) struct RawBody {
    /// Boxed (as the pool keeps it): the response, and the futures that carry it up
    /// through the stack, stay small to move.
    conn: Option<Box<RawConn>>,
    decoder: Decoder,
    keep_alive: bool,
}

impl RawBody {
    /// The body of `head`, read from `conn`.
    pub(crate) fn new(conn: Box<RawConn>, head: &ResponseHead) -> Self {
        let keep_alive = head.keep_alive;
        Self { conn: Some(conn), decoder: Decoder::new(head.framing), keep_alive }
    }

    /// Once the body is complete: the connection, if it can take another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<RawConn>> {
        if !self.decoder.is_done() || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.decoder = Decoder::new(Framing::Empty);
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => match this.decoder.at_eof() {
                    Ok(()) => {
                        this.keep_alive = false;
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.fail(e),
                },
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `wire` fed in pieces of `piece` bytes: the data, the trailers, and whether
    /// the body ended.
    fn decode_in_pieces(framing: Framing, wire: &[u8], piece: usize) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
        let mut decoder = Decoder::new(framing);
        let (mut buf, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut pieces = wire.chunks(piece);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        decoder.at_eof()?;
                        return Ok((data, trailers));
                    }
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_in_any_read_sizes() {
        let wire = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n";
        for piece in 1..wire.len() {
            let (data, trailers) = decode_in_pieces(Framing::Chunked, wire, piece).unwrap();
            assert_eq!(&data[..], b"abcde", "pieces of {piece}");
            assert_eq!(trailers.unwrap()["x-sum"], "9", "pieces of {piece}");
        }
        let (data, trailers) = decode_in_pieces(Framing::Chunked, b"1\r\nx\n0\r\n\r\n", 1).unwrap();
        assert_eq!((&data[..], trailers), (&b"x"[..], None), "a bare LF after chunk data is taken");
    }

    #[test]
    fn truncated_and_malformed_bodies_are_errors() {
        for (framing, wire) in [
            (Framing::Chunked, &b"zz\r\n"[..]),
            (Framing::Chunked, b"2\r\nabc\r\n0\r\n\r\n"),
            (Framing::Chunked, b"5\r\nab"),
            (Framing::Length(10), b"short"),
        ] {
            assert!(decode_in_pieces(framing, wire, 3).is_err(), "{framing:?} {:?}", String::from_utf8_lossy(wire));
        }
        let (data, _) = decode_in_pieces(Framing::Close, b"until close", 4).unwrap();
        assert_eq!(&data[..], b"until close");
    }
}
