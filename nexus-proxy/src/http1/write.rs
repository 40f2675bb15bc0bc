//! Writing a response on the lean path: the head and whatever of the body is ready in one
//! buffer, framed by `Content-Length` when the length is known and chunked otherwise, and
//! held to the length it declares.

use super::head::Framing;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body::Body;
use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;

/// The write buffer is sent once it holds this much of a streamed body.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Write `res`; `Ok(true)` when the connection can take another request.
///
/// `http10`: the request was HTTP/1.0. The answer says `HTTP/1.0`, as hyper's does; a kept
/// connection says `Connection: keep-alive`; and a body of unknown length is sent as it is,
/// ended by closing the connection (an HTTP/1.0 client reads no chunks).
pub(super) async fn respond<B, S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut Vec<u8>,
    res: http::Response<B>,
    head_request: bool,
    (client_close, http10): (bool, bool),
) -> std::io::Result<bool>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = res.into_parts();
    let mut body = pin!(body);
    wbuf.clear();
    let status = parts.status;
    wbuf.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
    let mut close = client_close;
    // The declared length: the body is held to it (a shorter or longer body closes the
    // connection, so the client never reads a wrong message boundary).
    let mut length: Option<u64> = None;
    let (mut has_date, mut has_connection) = (false, false);
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this server's to choose.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length = Some(super::head::parse_length(value.as_bytes()).unwrap_or(0));
        } else if name == header::CONNECTION {
            has_connection = true;
            close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        } else if name == header::DATE {
            has_date = true;
        }
        wbuf.extend_from_slice(name.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(value.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    if !has_date {
        wbuf.extend_from_slice(b"date: ");
        http_date(wbuf);
        wbuf.extend_from_slice(b"\r\n");
    }
    let bodiless_status =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if bodiless_status {
        Framing::Empty
    } else {
        if length.is_none()
            && let Some(n) = exact
        {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(itoa(n, &mut [0u8; 20]));
            wbuf.extend_from_slice(b"\r\n");
            length = Some(n);
        }
        if head_request {
            Framing::Empty
        } else if let Some(n) = length {
            Framing::Length(n)
        } else if http10 {
            close = true;
            Framing::Close
        } else {
            wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if !has_connection {
        if close {
            wbuf.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            wbuf.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    wbuf.extend_from_slice(b"\r\n");
    if framing == Framing::Empty {
        stream.write_all(wbuf).await?;
        return Ok(!close);
    }
    // The body: every frame that is ready goes into the buffer; the buffer is written when
    // the body has to wait (or is over the high-water mark), so a small response is one write.
    let mut remaining = length;
    loop {
        let step = poll_fn(|cx| {
            let mut progressed = false;
            loop {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            if framing == Framing::Chunked {
                                encode_chunk(&data, wbuf);
                            } else if framing == Framing::Close {
                                wbuf.extend_from_slice(&data);
                            } else {
                                let left = remaining.unwrap_or(0);
                                let take = left.min(data.len() as u64);
                                // (`take` is at most `data.len()`.)
                                wbuf.extend_from_slice(&data[..take as usize]);
                                remaining = Some(left - take);
                                if take < data.len() as u64 {
                                    return Poll::Ready(Step::Failed);
                                }
                            }
                            progressed = true;
                            if wbuf.len() >= WRITE_HIGH_WATER {
                                return Poll::Ready(Step::More);
                            }
                        }
                        // (Trailers are dropped, as hyper does for HTTP/1 clients.)
                    }
                    Poll::Ready(None) => return Poll::Ready(Step::End),
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Step::Failed),
                    Poll::Pending if progressed => return Poll::Ready(Step::More),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match step {
            Step::More => {
                stream.write_all(wbuf).await?;
                wbuf.clear();
            }
            Step::End => {
                if framing == Framing::Chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                stream.write_all(wbuf).await?;
                // A body shorter than it declared: the client must not wait for the rest.
                return Ok(!close && remaining.is_none_or(|r| r == 0));
            }
            Step::Failed => {
                // The upstream broke mid-body (or sent more than declared): what was sent
                // stays, the connection closes (the client sees a truncated body, never a
                // wrong one).
                stream.write_all(wbuf).await?;
                return Ok(false);
            }
        }
    }
}

enum Step {
    More,
    End,
    Failed,
}

fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// One chunk of a chunked body (`data` not empty: an empty chunk ends the body).
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(hex_len(data.len(), &mut [0u8; 16]));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn hex_len(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// The current time as an HTTP date, formatted once per second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local!(static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) });
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::convert::Infallible;

    /// What `respond` writes for `res` and whether it keeps the connection.
    async fn written(res: http::Response<http_body_util::Full<Bytes>>, head: bool) -> (String, bool) {
        written_for(res, head, (false, false)).await
    }

    /// The same for a request that asked to close, or was HTTP/1.0 (`(close, http10)`), and
    /// any body.
    async fn written_for<B: Body<Data = Bytes>>(
        res: http::Response<B>,
        head: bool,
        asked: (bool, bool),
    ) -> (String, bool) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let keep = respond(&mut server, &mut Vec::new(), res, head, asked).await.unwrap();
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        (out, keep)
    }

    #[tokio::test]
    async fn responses_are_framed_and_held_to_their_declared_length() {
        let full = |s: &'static str| http_body_util::Full::new(Bytes::from_static(s.as_bytes()));
        let (out, keep) = written(http::Response::new(full("hello")), false).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("\r\ncontent-length: 5\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello") && keep, "{out}");
        let (out, keep) = written(http::Response::new(full("hello")), true).await;
        assert!(out.contains("content-length: 5\r\n") && out.ends_with("\r\n\r\n") && keep, "HEAD: {out}");
        // A body shorter or longer than declared: the declared bytes at most, then close.
        for (declared, sent) in [("10", "\r\n\r\nhello"), ("3", "\r\n\r\nhel")] {
            let mut res = http::Response::new(full("hello"));
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static(declared));
            let (out, keep) = written(res, false).await;
            assert!(out.ends_with(sent) && !keep, "declared {declared}: {out:?}, keep-alive {keep}");
        }
        let mut res = http::Response::new(full(""));
        *res.status_mut() = StatusCode::NO_CONTENT;
        let (out, keep) = written(res, false).await;
        assert!(out.starts_with("HTTP/1.1 204 No Content\r\n") && !out.contains("content-length") && keep, "{out}");
    }

    #[tokio::test]
    async fn an_http10_client_gets_an_http10_answer_kept_open_only_when_asked_and_never_chunks() {
        let full = || http_body_util::Full::new(Bytes::from_static(b"hello"));
        // `Connection: keep-alive` asked for: said back, and the connection stays.
        let (out, keep) = written_for(http::Response::new(full()), false, (false, true)).await;
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.contains("\r\nconnection: keep-alive\r\n"), "{out}");
        assert!(out.contains("\r\ncontent-length: 5\r\n") && out.ends_with("\r\n\r\nhello") && keep, "{out}");
        // Not asked for: closed.
        let (out, keep) = written_for(http::Response::new(full()), false, (true, true)).await;
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.contains("\r\nconnection: close\r\n") && !keep, "{out}");
        // A body of unknown length: as it is, ended by the close (the HTTP/1.1 client gets chunks).
        let stream = || {
            let frames =
                ["hel", "lo"].map(|s| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(s.as_bytes()))));
            http_body_util::StreamBody::new(futures_util::stream::iter(frames))
        };
        let (out, keep) = written_for(http::Response::new(stream()), false, (false, true)).await;
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.contains("\r\nconnection: close\r\n"), "{out}");
        assert!(!out.contains("transfer-encoding") && out.ends_with("\r\n\r\nhello") && !keep, "{out}");
        let (out, keep) = written_for(http::Response::new(stream()), false, (false, false)).await;
        assert!(
            out.contains("\r\ntransfer-encoding: chunked\r\n")
                && out.ends_with("\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
            "{out}"
        );
        assert!(keep && !out.contains("connection:"), "{out}");
    }

    #[test]
    fn numbers_and_dates_are_formatted_for_the_wire() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(hex_len(255, &mut [0; 16]), b"ff");
        assert_eq!(hex_len(0x10000, &mut [0; 16]), b"10000");
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
