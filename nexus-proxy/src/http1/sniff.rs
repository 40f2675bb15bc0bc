//! hyper resolves a request that carries both `Content-Length` and
//! `Transfer-Encoding` by dropping `Content-Length` (RFC 9112 §6.3) before the
//! service sees it; SPEC §4 wants such a request refused with 400. This IO
//! wrapper reads the first request head of each connection as it passes and
//! raises a flag when both framings appear; later heads on the same connection
//! are left to hyper (it already closes such connections, so nothing is
//! smuggled either way). After the first head it costs one branch per read.
//!
//! It also replays the bytes the lean path ([`super::server`]) read before it handed the
//! connection to hyper (they are scanned like any other).

use super::server::Connection;
use bytes::Bytes;
use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Default)]
struct Scan {
    line: [u8; 20],
    len: usize,
    first_line: bool,
    saw_cl: bool,
    saw_te: bool,
}

impl Scan {
    /// Feed bytes; `Some(conflict)` once the head is complete.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        for &b in bytes {
            if b == b'\n' {
                let line = &self.line[..self.len];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() && !self.first_line {
                    return Some(self.saw_cl && self.saw_te);
                }
                if !self.first_line {
                    self.saw_cl |= line.starts_with(b"content-length:") || line.starts_with(b"content-length ");
                    self.saw_te |= line.starts_with(b"transfer-encoding:") || line.starts_with(b"transfer-encoding ");
                }
                self.first_line = false;
                self.len = 0;
            } else if self.len < self.line.len() {
                self.line[self.len] = b.to_ascii_lowercase();
                self.len += 1;
            }
        }
        None
    }
}

pin_project! {
    /// Wraps a connection's IO; see the module docs.
    #[derive(Debug)]
    pub(crate) struct HeadSniffer<T, C> {
        // Bytes read before the hand-off, delivered first.
        prefix: Bytes,
        #[pin]
        io: T,
        scan: Option<Box<Scan>>,
        conn: Arc<C>,
    }
}

impl<T, C: AsRef<Connection>> HeadSniffer<T, C> {
    /// Scan `io`, after replaying `prefix` (bytes already read from it); a conflict is
    /// marked on `conn`.
    pub(crate) fn new(prefix: Bytes, io: T, conn: Arc<C>) -> Self {
        Self { prefix, io, scan: Some(Box::new(Scan { first_line: true, ..Scan::default() })), conn }
    }
}

impl<T: AsyncRead, C: AsRef<Connection>> AsyncRead for HeadSniffer<T, C> {
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
        if let Some(scan) = this.scan
            && let Some(conflict) = scan.feed(&buf.filled()[before..])
        {
            if conflict {
                (**this.conn).as_ref().framing_conflict.store(true, Ordering::Relaxed);
            }
            *this.scan = None;
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

    fn scan(parts: &[&[u8]]) -> Option<bool> {
        let mut s = Scan { first_line: true, ..Scan::default() };
        parts.iter().find_map(|p| s.feed(p))
    }

    #[test]
    fn flags_both_framings_even_split_across_reads() {
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Len", b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            Some(true)
        );
        assert_eq!(scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]), Some(false));
        assert_eq!(scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]), Some(false));
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]), None, "head not complete yet");
    }
}
