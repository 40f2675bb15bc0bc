//! hyper's HTTP/1 server answers some requests itself, before the gateway sees them, and
//! those answers break SPEC §4 and §10: a head it cannot parse, or with more than 100 fields,
//! or larger than its buffer, gets a bare 400/431 without the JSON body or `X-Request-Id`; a
//! request with both `Content-Length` and `Transfer-Encoding` is resolved by dropping
//! `Content-Length` (RFC 9112 §6.3) where SPEC wants 400 and close; a transfer coding other
//! than `chunked` is a bare 400 where SPEC wants 501.
//!
//! This IO wrapper is the gate in front of hyper's parser. It holds each request head until
//! it is whole and judges it with `httparse` under hyper's own limits; a head that passes is
//! released as it is, its body is followed as it
//! passes (by `Content-Length`, or chunk by chunk, body bytes a slice at a time, never read
//! as a head), and the next head is held again. A head that would be refused is never shown
//! to hyper: in its place hyper reads a small valid request, the [`Connection`] is told which
//! of hyper's requests that is and why ([`Connection::refusal`]), and the handler answers it
//! with the JSON error and closes; nothing after it is read. The gate stops (and costs
//! nothing more) at an upgrade or `CONNECT`, whose bytes after the head are not requests.
//!
//! It also replays the bytes the lean path ([`super::server`]) read before it handed the
//! connection to hyper (they are judged like any other).
//!
//! A connection that opens with the HTTP/2 preface is followed frame by frame instead
//! ([`Frames`]): whether a header block is left open at the end of a read goes to the
//! connection's [`Streams`], whose timer closes a block that does not complete in time.

use super::frames::Frames;
use super::head::MAX_SERVER_FIELDS;
use super::server::Connection;
use super::streams::Streams;
use bytes::{Bytes, BytesMut};
use nexus_core::ErrorCode;
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// What hyper reads in place of a refused head (the handler answers it with the refusal).
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";

/// Why the server refused a request head before hyper read it ([`Connection::refusal`]):
/// the JSON error the handler answers with ([`Refusal::error`]), then it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Not a valid HTTP/1 head (400 `bad_request`).
    Malformed = 1,
    /// Both `Content-Length` and `Transfer-Encoding` (400 `bad_request`).
    ConflictingFraming,
    /// `Content-Length` that is not one number (400 `bad_request`).
    BadLength,
    /// An empty transfer coding (400 `bad_request`).
    EmptyCoding,
    /// A transfer coding other than `chunked` (501 `not_implemented`).
    UnsupportedCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request (400 `bad_request`, RFC 9112 §6.1).
    CodingInHttp10,
    /// A request target that is not a URI (400 `bad_request`).
    BadTarget,
    /// More than 100 fields (431 `headers_too_large`).
    TooManyFields,
    /// Larger than the server reads for a head (431 `headers_too_large`).
    TooLarge,
}

impl Refusal {
    const ALL: [Self; 9] = [
        Self::Malformed,
        Self::ConflictingFraming,
        Self::BadLength,
        Self::EmptyCoding,
        Self::UnsupportedCoding,
        Self::CodingInHttp10,
        Self::BadTarget,
        Self::TooManyFields,
        Self::TooLarge,
    ];

    pub(super) fn from_u8(n: u8) -> Option<Self> {
        // 0 (no refusal) is every request but a refused one's stand-in: answered first.
        if n == 0 {
            return None;
        }
        Self::ALL.into_iter().find(|r| *r as u8 == n)
    }

    /// The error code and message of the answer.
    pub fn error(self) -> (ErrorCode, &'static str) {
        match self {
            Self::Malformed => (ErrorCode::BadRequest, "malformed request head"),
            Self::ConflictingFraming => (ErrorCode::BadRequest, "conflicting Content-Length and Transfer-Encoding"),
            Self::BadLength => (ErrorCode::BadRequest, "invalid Content-Length"),
            Self::EmptyCoding => (ErrorCode::BadRequest, "empty transfer coding"),
            Self::UnsupportedCoding => (ErrorCode::NotImplemented, "only the chunked transfer coding is supported"),
            Self::CodingInHttp10 => (ErrorCode::BadRequest, "Transfer-Encoding in an HTTP/1.0 request"),
            Self::BadTarget => (ErrorCode::BadRequest, "invalid request target"),
            Self::TooManyFields => (ErrorCode::HeadersTooLarge, "too many header fields"),
            Self::TooLarge => (ErrorCode::HeadersTooLarge, "request head too large"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A head comes next: held until whole.
    Head,
    /// This many body bytes left.
    Body(u64),
    /// A chunk-size line (hex digits, then extensions up to the line's end).
    ChunkSize {
        size: u64,
        ext: bool,
    },
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Trailer lines, until an empty one.
    Trailer {
        empty: bool,
    },
    /// Not following any more: bytes pass as they are.
    Stop,
    /// A head was refused: its stand-in was released, nothing more is.
    Refused,
}

/// What the gate made of the held bytes.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    /// More bytes needed.
    Partial,
    /// Release this head; the body is followed by `phase`.
    Pass(Bytes, Phase),
    /// Refused: its stand-in goes to hyper.
    Refuse(Refusal),
}

/// The gate's state, apart from the IO (see the module docs).
#[derive(Debug)]
struct Gate {
    phase: Phase,
    /// Bytes read and not released yet: a head being gathered (and what came after it).
    held: BytesMut,
    /// A head larger than this is refused (hyper's read buffer).
    max_head: usize,
    /// Heads released so far (stand-ins included): hyper's request index of the next one.
    heads: u64,
}

impl Gate {
    fn new(held: BytesMut, max_head: usize) -> Self {
        Self { phase: Phase::Head, held, max_head, heads: 0 }
    }

    /// Judge the head at the start of the held bytes (consumed unless `Partial`).
    fn judge(&mut self) -> Judged {
        let mut fields = [httparse::EMPTY_HEADER; MAX_SERVER_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        // No more than one byte past the limit is looked at, so what is refused, and why, does
        // not depend on how the bytes arrived (a flaw past the limit is the size's refusal).
        let window = &self.held[..self.held.len().min(self.max_head + 1)];
        let len = match req.parse(window) {
            Ok(httparse::Status::Complete(len)) if len > self.max_head => return Judged::Refuse(Refusal::TooLarge),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if window.len() > self.max_head => {
                return Judged::Refuse(Refusal::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Judged::Partial,
            Err(httparse::Error::TooManyHeaders) => return Judged::Refuse(Refusal::TooManyFields),
            Err(_) => return Judged::Refuse(Refusal::Malformed),
        };
        let (mut length, mut codings, mut upgrade) = (None, false, false);
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = super::head::parse_length(h.value);
                match n {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return Judged::Refuse(Refusal::BadLength),
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                codings = true;
                if let Err(refusal) = only_chunked(h.value) {
                    return Judged::Refuse(refusal);
                }
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if codings && length.is_some() {
            return Judged::Refuse(Refusal::ConflictingFraming);
        }
        let http10 = req.version == Some(0);
        if http10 && codings {
            return Judged::Refuse(Refusal::CodingInHttp10);
        }
        // hyper parses the target into a `Uri` and refuses what does not parse.
        if req.path.is_none_or(|p| http::Uri::try_from(p).is_err()) {
            return Judged::Refuse(Refusal::BadTarget);
        }
        let connect = req.method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
        let phase = if connect || (upgrade && !http10) {
            // What follows may be another protocol: not followed.
            Phase::Stop
        } else if codings {
            Phase::ChunkSize { size: 0, ext: false }
        } else {
            match length {
                Some(n) if n > 0 => Phase::Body(n),
                _ => Phase::Head,
            }
        };
        Judged::Pass(self.held.split_to(len).freeze(), phase)
    }

    /// Follow body bytes at the start of `bytes`; how many belong to the body (up to where
    /// the next head starts, or all of them).
    fn follow(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            match self.phase {
                Phase::Head | Phase::Stop | Phase::Refused => break,
                Phase::Body(left) | Phase::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len() - used);
                    used += n;
                    let left = left - n as u64;
                    self.phase = match (self.phase, left) {
                        (Phase::Body(_), 0) => Phase::Head,
                        (Phase::Body(_), l) => Phase::Body(l),
                        (_, 0) => Phase::ChunkEnd,
                        (_, l) => Phase::ChunkData(l),
                    };
                }
                _ => {
                    self.chunk_byte(bytes[used]);
                    used += 1;
                }
            }
        }
        used
    }

    fn chunk_byte(&mut self, b: u8) {
        self.phase = match self.phase {
            Phase::ChunkSize { size, ext } => match b {
                b'\n' if size == 0 => Phase::Trailer { empty: true },
                b'\n' => Phase::ChunkData(size),
                b'\r' => self.phase,
                _ if ext => self.phase,
                b';' | b' ' | b'\t' => Phase::ChunkSize { size, ext: true },
                _ => match (b as char).to_digit(16) {
                    Some(d) if size >> 60 == 0 => Phase::ChunkSize { size: size << 4 | u64::from(d), ext },
                    // Not a chunk size hyper would take either: it ends the connection.
                    _ => Phase::Stop,
                },
            },
            Phase::ChunkEnd => match b {
                b'\r' => Phase::ChunkEnd,
                b'\n' => Phase::ChunkSize { size: 0, ext: false },
                _ => Phase::Stop,
            },
            Phase::Trailer { empty } => match b {
                b'\r' => self.phase,
                b'\n' if empty => Phase::Head,
                b'\n' => Phase::Trailer { empty: true },
                _ => Phase::Trailer { empty: false },
            },
            other => other,
        };
    }
}

/// A `Transfer-Encoding` value's codings: `chunked` only (the gateway implements no other).
pub(crate) fn only_chunked(value: &[u8]) -> Result<(), Refusal> {
    for coding in value.split(|b| *b == b',') {
        let name = coding.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        if name.is_empty() {
            return Err(Refusal::EmptyCoding);
        }
        if !name.eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::UnsupportedCoding);
        }
    }
    Ok(())
}

/// What the wrapper follows.
#[derive(Debug)]
enum Follow {
    Http1(Box<Gate>),
    H2(Frames),
}

pin_project! {
    /// Wraps a connection's IO; see the module docs.
    #[derive(Debug)]
    pub(crate) struct HeadSniffer<T, C> {
        // Bytes released to hyper and not read by it yet.
        ready: Bytes,
        #[pin]
        io: T,
        follow: Follow,
        conn: Arc<C>,
    }
}

impl<T, C: AsRef<Connection> + AsRef<Streams>> HeadSniffer<T, C> {
    /// Gate `io`'s HTTP/1 heads (heads over `max_head` bytes are refused), or follow its
    /// HTTP/2 frames when `h2` (the connection opened with the preface). `prefix`: bytes
    /// already read from `io`, judged first. A refusal is told to `conn`'s [`Connection`], an
    /// open header block to its [`Streams`].
    pub(crate) fn new(prefix: Bytes, io: T, conn: Arc<C>, h2: bool, max_head: usize) -> Self {
        if h2 {
            return Self { ready: prefix, io, follow: Follow::H2(Frames::new()), conn };
        }
        let gate = Gate::new(BytesMut::from(prefix), max_head);
        Self { ready: Bytes::new(), io, follow: Follow::Http1(Box::new(gate)), conn }
    }
}

impl<T: AsyncRead, C: AsRef<Connection> + AsRef<Streams>> AsyncRead for HeadSniffer<T, C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                let released = this.ready.split_to(n);
                if let Follow::H2(frames) = this.follow {
                    let blocks = frames.blocks();
                    frames.feed(&released);
                    AsRef::<Streams>::as_ref(&**this.conn).header_block(frames.block_open(), frames.blocks() != blocks);
                }
                buf.put_slice(&released);
                return Poll::Ready(Ok(()));
            }
            let gate = match this.follow {
                Follow::H2(frames) => {
                    let before = buf.filled().len();
                    ready!(this.io.as_mut().poll_read(cx, buf))?;
                    let read = &buf.filled()[before..];
                    if !read.is_empty() {
                        let blocks = frames.blocks();
                        frames.feed(read);
                        AsRef::<Streams>::as_ref(&**this.conn)
                            .header_block(frames.block_open(), frames.blocks() != blocks);
                    }
                    return Poll::Ready(Ok(()));
                }
                Follow::Http1(gate) => gate,
            };
            match gate.phase {
                // After a refusal nothing is read: hyper answers the stand-in and closes.
                Phase::Refused => return Poll::Pending,
                Phase::Stop if gate.held.is_empty() => return this.io.as_mut().poll_read(cx, buf),
                Phase::Stop => *this.ready = gate.held.split().freeze(),
                Phase::Head => {
                    if !gate.held.is_empty() {
                        match gate.judge() {
                            Judged::Pass(head, phase) => {
                                gate.phase = phase;
                                gate.heads += 1;
                                *this.ready = head;
                                continue;
                            }
                            Judged::Refuse(refusal) => {
                                AsRef::<Connection>::as_ref(&**this.conn).refuse_at(gate.heads, refusal);
                                gate.phase = Phase::Refused;
                                gate.held = BytesMut::new();
                                *this.ready = Bytes::from_static(STAND_IN);
                                continue;
                            }
                            Judged::Partial => {}
                        }
                    }
                    // More of the head: read into the held bytes.
                    gate.held.reserve(4096);
                    let n = ready!(poll_read_buf(this.io.as_mut(), cx, &mut gate.held))?;
                    if n == 0 {
                        // The client closed mid-head: hyper gets what there is, then the end.
                        gate.phase = Phase::Stop;
                        if gate.held.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
                // A body: what is held first, then straight into hyper's buffer; bytes past
                // the body's end are the next head's, and are held.
                _ if !gate.held.is_empty() => {
                    let n = gate.follow(&gate.held.clone());
                    *this.ready = gate.held.split_to(n).freeze();
                }
                _ => {
                    let before = buf.filled().len();
                    ready!(this.io.as_mut().poll_read(cx, buf))?;
                    let read = &buf.filled()[before..];
                    if read.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let n = gate.follow(read);
                    if n < read.len() {
                        gate.held.extend_from_slice(&read[n..]);
                        buf.set_filled(before + n);
                    }
                    if n > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite, C> AsyncWrite for HeadSniffer<T, C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What hyper reads from `stream` sent in pieces of `piece` bytes (the first `prefix` bytes
/// as the lean path's replay), and the refusal the connection was told of (for tests and
/// the `http1_gate` fuzz target).
#[cfg(any(test, fuzzing))]
pub(super) fn gate_through(stream: &[u8], piece: usize, prefix: usize) -> (Vec<u8>, Option<(u64, Refusal)>) {
    use std::collections::VecDeque;

    /// A client that sends `pieces`, one per read, then closes.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Both(Connection, Streams);

    impl AsRef<Connection> for Both {
        fn as_ref(&self) -> &Connection {
            &self.0
        }
    }

    impl AsRef<Streams> for Both {
        fn as_ref(&self) -> &Streams {
            &self.1
        }
    }

    let (pre, rest) = stream.split_at(prefix.min(stream.len()));
    let pieces = rest.chunks(piece).map(<[u8]>::to_vec).collect();
    let conn = Arc::new(Both::default());
    let mut sniffer = HeadSniffer::new(Bytes::copy_from_slice(pre), Pieces(pieces), Arc::clone(&conn), false, 512);
    let mut seen = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut storage = [0u8; 1024];
    loop {
        let mut buf = ReadBuf::new(&mut storage);
        // The client never makes hyper wait: pending is the gate's after a refusal.
        match Pin::new(&mut sniffer).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => seen.extend_from_slice(buf.filled()),
            _ => break,
        }
    }
    (seen, conn.0.refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn gate(stream: &[u8], piece: usize, prefix: usize) -> (Vec<u8>, Option<(u64, Refusal)>) {
        gate_through(stream, piece, prefix)
    }

    const STREAM: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 31\r\n\r\nGET /fake HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n11;ext=1\r\nContent-Length: 3\r\n0\r\nX-T: 1\r\n\r\n\
        GET /c HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn heads_pass_whole_and_bodies_are_followed_never_read_as_heads() {
        // Body bytes that look like heads or fields are skipped, never judged as such.
        for piece in [1, 2, 7, STREAM.len()] {
            for prefix in [0, 20, STREAM.len()] {
                assert_eq!(gate(STREAM, piece, prefix).await, (STREAM.to_vec(), None), "pieces of {piece}");
            }
        }
    }

    #[tokio::test]
    async fn a_refused_head_reaches_hyper_as_its_stand_in_and_nothing_after_it_does() {
        let conflict =
            b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for (what, bad, why) in [
            ("both framings", &conflict[..], Refusal::ConflictingFraming),
            ("two lengths", b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", Refusal::BadLength),
            ("a coding", b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", Refusal::UnsupportedCoding),
            (
                "a coding first",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Refusal::UnsupportedCoding,
            ),
            ("an empty coding", b"POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked\r\n\r\n", Refusal::EmptyCoding),
            ("malformed", b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", Refusal::Malformed),
            ("chunked HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Refusal::CodingInHttp10),
            ("a bad target", b"GET http://[::1 HTTP/1.1\r\n\r\n", Refusal::BadTarget),
            ("the HTTP/2 preface late", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Refusal::Malformed),
            ("too large", &[&b"GET / HTTP/1.1\r\nX-Big: "[..], &[b'v'; 600]].concat(), Refusal::TooLarge),
        ] {
            let stream = [STREAM, bad, b"GET /after HTTP/1.1\r\n\r\n"].concat();
            for piece in [1, 5, stream.len()] {
                let (seen, refused) = gate(&stream, piece, 0).await;
                assert_eq!(refused, Some((3, why)), "{what}, pieces of {piece}");
                assert_eq!(seen, [STREAM, STAND_IN].concat(), "{what}, pieces of {piece}");
            }
        }
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A:\r\n".repeat(101));
        assert_eq!(gate(many.as_bytes(), 1000, 0).await, (STAND_IN.to_vec(), Some((0, Refusal::TooManyFields))));
    }

    #[tokio::test]
    async fn upgrades_and_connect_end_the_gate() {
        // After an upgrade or CONNECT the bytes are another protocol's: passed as they are.
        for stream in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello"[..],
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01 not a head",
        ] {
            assert_eq!(gate(stream, 4, 0).await, (stream.to_vec(), None), "{}", String::from_utf8_lossy(stream));
        }
    }
}
