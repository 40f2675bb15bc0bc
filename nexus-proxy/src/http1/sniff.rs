//! hyper resolves a request that carries both `Content-Length` and
//! `Transfer-Encoding` by dropping `Content-Length` (RFC 9112 §6.3) before the
//! service sees it; SPEC §4 and §10 want every such request refused with 400 and the
//! connection closed. This IO wrapper follows the request stream as it passes, head after
//! head: it reads each head's framing fields, skips its body (by `Content-Length`, or
//! chunk by chunk), and records the index of the first head that carries both framings
//! ([`Connection`] compares it with the request hyper hands over). Body bytes are skipped a
//! slice at a time; head bytes cost a few instructions each. It stops following (and stops
//! costing anything) at an upgrade, `CONNECT`, the HTTP/2 preface, a conflict (that request
//! closes the connection), or framing it cannot follow (which hyper refuses too).
//!
//! It also replays the bytes the lean path ([`super::server`]) read before it handed the
//! connection to hyper (they are scanned like any other).
//!
//! A connection that opens with the HTTP/2 preface is followed frame by frame instead
//! ([`Frames`]): whether a header block is left open at the end of a read goes to the
//! connection's [`Streams`], whose timer closes a block that does not complete in time.

use super::frames::Frames;
use super::server::Connection;
use super::streams::Streams;
use bytes::Bytes;
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a head line begins with is kept up to this many bytes (lower-cased): enough for
/// `content-length: ` and nineteen digits.
const LINE: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
    /// Not following any more.
    Stop,
}

#[derive(Debug)]
struct Scan {
    phase: Phase,
    line: [u8; LINE],
    len: usize,
    /// The line is longer than `line`.
    long: bool,
    /// The last eight bytes of the line (for `...chunked` at the end of a long value).
    tail: u64,
    first_line: bool,
    length: Option<u64>,
    saw_te: bool,
    chunked: bool,
    upgrade: bool,
    /// Heads completed so far.
    heads: u64,
}

impl Scan {
    fn new() -> Self {
        Self {
            phase: Phase::Head,
            line: [0; LINE],
            len: 0,
            long: false,
            tail: 0,
            first_line: true,
            length: None,
            saw_te: false,
            chunked: false,
            upgrade: false,
            heads: 0,
        }
    }

    /// Follow `bytes`; `Some(i)` when head number `i` (from 0) carries both framings.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Stop => return None,
                Phase::Body(left) | Phase::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.phase = match (self.phase, left) {
                        (Phase::Body(_), 0) => Phase::Head,
                        (Phase::Body(_), l) => Phase::Body(l),
                        (_, 0) => Phase::ChunkEnd,
                        (_, l) => Phase::ChunkData(l),
                    };
                }
                _ => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(conflict) = self.byte(b) {
                        return Some(conflict);
                    }
                }
            }
        }
        None
    }

    fn byte(&mut self, b: u8) -> Option<u64> {
        match self.phase {
            Phase::Head => return self.head_byte(b),
            Phase::ChunkSize { size, ext } => match b {
                b'\n' if size == 0 => self.phase = Phase::Trailer { empty: true },
                b'\n' => self.phase = Phase::ChunkData(size),
                b'\r' => {}
                _ if ext => {}
                b';' | b' ' | b'\t' => self.phase = Phase::ChunkSize { size, ext: true },
                _ => match (b as char).to_digit(16) {
                    Some(d) if size >> 60 == 0 => self.phase = Phase::ChunkSize { size: size << 4 | u64::from(d), ext },
                    _ => self.phase = Phase::Stop,
                },
            },
            Phase::ChunkEnd => match b {
                b'\r' => {}
                b'\n' => self.phase = Phase::ChunkSize { size: 0, ext: false },
                _ => self.phase = Phase::Stop,
            },
            Phase::Trailer { empty } => match b {
                b'\r' => {}
                b'\n' if empty => self.phase = Phase::Head,
                b'\n' => self.phase = Phase::Trailer { empty: true },
                _ => self.phase = Phase::Trailer { empty: false },
            },
            Phase::Body(_) | Phase::ChunkData(_) | Phase::Stop => {}
        }
        None
    }

    fn head_byte(&mut self, b: u8) -> Option<u64> {
        if b != b'\n' {
            if b != b'\r' {
                if self.len < LINE {
                    self.line[self.len] = b.to_ascii_lowercase();
                    self.len += 1;
                } else {
                    self.long = true;
                }
                if b != b' ' && b != b'\t' {
                    self.tail = self.tail << 8 | u64::from(b.to_ascii_lowercase());
                }
            }
            return None;
        }
        let (line, long) = (&self.line[..self.len], self.long);
        let first = std::mem::replace(&mut self.first_line, false);
        if first {
            if line.is_empty() {
                // Blank lines before a request line are ignored (RFC 9112 §2.2).
                self.first_line = true;
            } else if line.starts_with(b"pri * http/2") || line.starts_with(b"connect ") {
                self.phase = Phase::Stop;
            }
        } else if line.is_empty() {
            return self.end_of_head();
        } else if let Some(value) = field(line, b"content-length") {
            let n = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match n {
                Some(n) if !long && self.length.is_none_or(|l| l == n) => self.length = Some(n),
                // Unparsable or differing lengths: hyper refuses the request.
                _ => self.phase = Phase::Stop,
            }
        } else if field(line, b"transfer-encoding").is_some() {
            self.saw_te = true;
            // The last coding decides (`...chunked` at the very end of the line).
            self.chunked = self.tail & 0x00ff_ffff_ffff_ffff == u64::from_be_bytes(*b"\0chunked");
        } else if field(line, b"upgrade").is_some() {
            self.upgrade = true;
        }
        self.len = 0;
        self.long = false;
        self.tail = 0;
        None
    }

    fn end_of_head(&mut self) -> Option<u64> {
        let index = self.heads;
        self.heads += 1;
        let conflict = self.saw_te && self.length.is_some();
        self.phase = if conflict || self.upgrade || self.phase == Phase::Stop {
            Phase::Stop
        } else if self.saw_te {
            if self.chunked { Phase::ChunkSize { size: 0, ext: false } } else { Phase::Stop }
        } else {
            match self.length {
                Some(n) if n > 0 => Phase::Body(n),
                _ => Phase::Head,
            }
        };
        (self.first_line, self.len, self.long, self.tail) = (true, 0, false, 0);
        (self.length, self.saw_te, self.chunked, self.upgrade) = (None, false, false, false);
        conflict.then_some(index)
    }
}

/// The value of `line` when it is the field `name` (`name:` or `name :`, as hyper would
/// refuse the latter anyway).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    let rest = rest.trim_ascii_start();
    rest.strip_prefix(b":")
}

/// What the sniffer follows.
#[derive(Debug)]
enum Follow {
    Http1(Box<Scan>),
    H2(Frames),
    Nothing,
}

pin_project! {
    /// Wraps a connection's IO; see the module docs.
    #[derive(Debug)]
    pub(crate) struct HeadSniffer<T, C> {
        // Bytes read before the hand-off, delivered first.
        prefix: Bytes,
        #[pin]
        io: T,
        follow: Follow,
        conn: Arc<C>,
    }
}

impl<T, C: AsRef<Connection> + AsRef<Streams>> HeadSniffer<T, C> {
    /// Scan `io`, after replaying `prefix` (bytes already read from it): HTTP/2 frames when
    /// `h2` (the connection opened with the preface), HTTP/1 heads otherwise. A conflict is
    /// marked on `conn`'s [`Connection`], an open header block on its [`Streams`].
    pub(crate) fn new(prefix: Bytes, io: T, conn: Arc<C>, h2: bool) -> Self {
        let follow = if h2 { Follow::H2(Frames::new()) } else { Follow::Http1(Box::new(Scan::new())) };
        Self { prefix, io, follow, conn }
    }
}

impl<T: AsyncRead, C: AsRef<Connection> + AsRef<Streams>> AsyncRead for HeadSniffer<T, C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = if this.prefix.is_empty() {
            this.io.poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        let read = &buf.filled()[before..];
        match this.follow {
            Follow::Http1(scan) => {
                if let Some(index) = scan.feed(read) {
                    AsRef::<Connection>::as_ref(&**this.conn).conflict_at(index);
                }
                if scan.phase == Phase::Stop {
                    *this.follow = Follow::Nothing;
                }
            }
            Follow::H2(frames) if !read.is_empty() => {
                let blocks = frames.blocks();
                frames.feed(read);
                AsRef::<Streams>::as_ref(&**this.conn).header_block(frames.block_open(), frames.blocks() != blocks);
            }
            Follow::H2(_) | Follow::Nothing => {}
        }
        res
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `parts` in order; the first conflicting head's index.
    fn scan(parts: &[&[u8]]) -> (Option<u64>, Phase, u64) {
        let mut s = Scan::new();
        let found = parts.iter().find_map(|p| s.feed(p));
        (found, s.phase, s.heads)
    }

    #[test]
    fn flags_both_framings_even_split_across_reads() {
        let (found, ..) = scan(&[b"POST / HTTP/1.1\r\nContent-Len", b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(found, Some(0));
        assert_eq!(scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]).0, None);
        assert_eq!(scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]).0, None);
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]).0, None, "head not complete yet");
    }

    #[test]
    fn every_head_is_followed_through_length_and_chunked_bodies() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nxx\
            POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n11;ext=1\r\nContent-Length: 3\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Body bytes that look like heads or fields are skipped, never read as such.
        for piece in [1, 2, 7, stream.len()] {
            let parts: Vec<&[u8]> = stream.chunks(piece).collect();
            let (found, phase, heads) = scan(&parts);
            assert_eq!((found, phase, heads), (Some(3), Phase::Stop, 4), "pieces of {piece}");
        }
    }

    #[test]
    fn following_stops_where_the_stream_stops_being_http_1_requests() {
        for stream in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let (found, phase, _) = scan(&[stream]);
            assert_eq!((found, phase), (None, Phase::Stop), "{}", String::from_utf8_lossy(stream));
        }
    }
}
