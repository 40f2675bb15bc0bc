//! Follows an HTTP/2 (prior knowledge) connection's frames as they pass, to tell whether a
//! header block is open: SPEC §10 wants every header block complete within
//! `header_read_timeout`, and hyper (h2) has no such timer — a client that sends a
//! `HEADERS` frame without `END_HEADERS` and never the `CONTINUATION`, or a frame header
//! announcing a long header block and then a byte a minute, would hold its connection (and
//! the HPACK state h2 keeps for it) for as long as it likes.
//!
//! Only the 9-byte frame headers are read (RFC 9113 §4.1); payloads are skipped a slice at a
//! time. A block opens with the header of a `HEADERS` or `PUSH_PROMISE` frame and closes
//! when the whole payload of the frame carrying `END_HEADERS` (that frame, or the last
//! `CONTINUATION`) has arrived. Anything else h2 refuses on its own.

/// The client connection preface (RFC 9113 §3.4), skipped first.
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// See the module docs.
#[derive(Debug)]
pub(super) struct Frames {
    /// Preface bytes still to skip.
    preface_left: usize,
    /// The frame header being gathered.
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame ends the header block when its payload is complete.
    ends_block: bool,
    open: bool,
    /// Header blocks begun so far.
    blocks: u64,
}

impl Frames {
    /// Following a connection from its first byte (the preface).
    pub(super) fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            head: [0; 9],
            have: 0,
            payload_left: 0,
            ends_block: false,
            open: false,
            blocks: 0,
        }
    }

    /// Header blocks begun so far.
    pub(super) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// A header block has begun and not ended yet.
    pub(super) fn block_open(&self) -> bool {
        self.open
    }

    /// Follow `bytes`, the next bytes the client sent.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    self.frame_header();
                }
            }
        }
    }

    fn frame_header(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.head;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.ends_block = match kind {
            HEADERS | PUSH_PROMISE => {
                self.open = true;
                self.blocks += 1;
                flags & END_HEADERS != 0
            }
            CONTINUATION => flags & END_HEADERS != 0,
            _ => false,
        };
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.ends_block {
            self.open = false;
            self.ends_block = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Whether a block is open after each of `pieces` (fed in order).
    fn follow(pieces: &[&[u8]]) -> Vec<bool> {
        let mut frames = Frames::new();
        pieces
            .iter()
            .map(|p| {
                frames.feed(p);
                frames.block_open()
            })
            .collect()
    }

    #[test]
    fn a_block_is_open_from_its_headers_frame_until_the_end_headers_payload_has_arrived() {
        let settings = frame(0x4, 0, 0, &[]);
        let headers = frame(HEADERS, 0x1, 1, b"hpack-a");
        let cont = frame(CONTINUATION, END_HEADERS, 1, b"hpack-b");
        let data = frame(0x0, 0x1, 1, b"body");
        let stream: Vec<u8> = [PREFACE, &settings, &headers, &cont, &data].concat();
        // Byte by byte: open exactly from the HEADERS frame's header to the CONTINUATION's end.
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        let open = follow(&pieces);
        let start = PREFACE.len() + settings.len() + 8;
        let end = start + (headers.len() - 8) + cont.len();
        for (i, open) in open.iter().enumerate() {
            assert_eq!(*open, (start..end - 1).contains(&i), "after byte {i}");
        }
    }

    #[test]
    fn a_complete_block_in_one_read_never_shows_open_and_a_stalled_one_stays_open() {
        let whole = [PREFACE, &frame(HEADERS, END_HEADERS | 0x1, 1, b"hpack")].concat();
        assert_eq!(follow(&[&whole]), [false]);
        // The frame header says 100 bytes of header block; three arrive.
        let stalled = [PREFACE, &frame(HEADERS, END_HEADERS, 3, &[0; 100])[..12]].concat();
        assert_eq!(follow(&[&stalled]), [true]);
        // A PUSH_PROMISE is a header block too (h2 refuses it from a client, but not before it ends).
        let push = [PREFACE, &frame(PUSH_PROMISE, 0, 1, b"x")].concat();
        assert_eq!(follow(&[&push]), [true]);
    }
}
