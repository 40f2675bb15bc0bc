//! W3C Trace Context (SPEC §9): the request that goes upstream carries exactly one
//! `traceparent`, naming the gateway's own span. A valid incoming `traceparent` is
//! continued (same trace id and flags, the gateway's span id as the new parent); an
//! absent, invalid or repeated one is replaced by a new trace, sampled per [`Sampling`]
//! ([`ensure_with`]; [`ensure`] never samples a new trace). `tracestate` is passed on
//! untouched. Spans are exported by `nexus_middleware::otel` (feature `otel`).
//!
//! ```
//! use nexus_middleware::trace_context::{TraceParent, ensure};
//! let mut headers = http::HeaderMap::new();
//! headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let ours = ensure(&mut headers);
//! assert_eq!(ours.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "the trace is continued");
//! assert_ne!(ours.parent_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7], "under the gateway's own span");
//! assert_eq!(TraceParent::parse(headers["traceparent"].as_bytes()), Some(ours));
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A `traceparent` value: version 00's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The span the next hop is a child of (8 bytes, not all zero).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN: usize = 55;

impl TraceParent {
    /// Parse a `traceparent` (lower-case hex; version `ff` and all-zero ids are invalid; a
    /// later version may carry more fields after the flags, version 00 may not).
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&v[..2])?[0];
        if version == 0xff || (version == 0 && v.len() != LEN) || (v.len() > LEN && v[LEN] != b'-') {
            return None;
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let parent_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?[0];
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(Self { trace_id, parent_id, flags })
    }

    /// The header value (version 00).
    pub fn to_header_value(&self) -> HeaderValue {
        let mut buf = [0u8; LEN];
        buf[..3].copy_from_slice(b"00-");
        crate::hex::encode(&self.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        crate::hex::encode(&self.parent_id, &mut buf[36..52]);
        buf[52] = b'-';
        crate::hex::encode(&[self.flags], &mut buf[53..55]);
        HeaderValue::from_bytes(&buf).expect("hex and dashes are a valid header value")
    }

    /// The trace id as 32 lower-case hex digits (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        let mut buf = [0u8; 32];
        crate::hex::encode(&self.trace_id, &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// `N` bytes from `2N` lower-case hex digits.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// How a trace is sampled (SPEC §9 `tracing:`): a valid incoming `traceparent`'s sampled
/// flag is followed when `respect_parent` is set; otherwise (no parent, an invalid one, or
/// a parent not trusted) `ratio` of requests are sampled. The default is what a gateway
/// without a `tracing:` block does: follow the parent, never sample a new trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Share of requests sampled when the parent does not decide (0.0 to 1.0).
    pub ratio: f64,
    /// Follow a valid parent's sampled flag.
    pub respect_parent: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { ratio: 0.0, respect_parent: true }
    }
}

impl Sampling {
    /// Sample `ratio` of new traces, following a sampled parent (`respect_parent`).
    pub fn new(ratio: f64, respect_parent: bool) -> Self {
        Self { ratio, respect_parent }
    }

    /// The decision for a request without a parent that decides: one draw when
    /// `0 < ratio < 1`, none otherwise.
    fn draw(&self) -> bool {
        if self.ratio <= 0.0 {
            false
        } else if self.ratio >= 1.0 {
            true
        } else {
            // 53 random bits against the ratio: exact to f64's precision.
            #[allow(clippy::cast_precision_loss)]
            let x = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
            x < self.ratio
        }
    }
}

/// The gateway's span of a request: [`ours`](Self::ours) is what went upstream (its
/// `parent_id` is the gateway's span id), `parent_id` the client's span when the trace
/// was continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The `traceparent` sent upstream.
    pub ours: TraceParent,
    /// The span of the caller that sent a valid `traceparent`, if one did.
    pub parent_id: Option<[u8; 8]>,
}

impl TraceParent {
    /// Whether the trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Whether `headers`' `traceparent`, one the gateway wrote ([`ensure`]), says sampled: its
/// last hex digit read alone (no parse), for checks on every request.
pub fn is_sampled(headers: &HeaderMap) -> bool {
    headers.get(TRACEPARENT).is_some_and(|v| is_sampled_value(v.as_bytes()))
}

/// [`is_sampled`] for a `traceparent` value already at hand (a pass over a request's fields).
pub fn is_sampled_value(v: &[u8]) -> bool {
    v.get(LEN - 1).is_some_and(|d| matches!(d, b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'))
}

/// Make `headers` carry one `traceparent` for the gateway's span, and return it: the
/// incoming trace continued when its one `traceparent` is valid, a new trace otherwise
/// (never sampled: [`Sampling::default`]). See [`ensure_with`].
pub fn ensure(headers: &mut HeaderMap) -> TraceParent {
    ensure_with(headers, &Sampling::default()).ours
}

/// [`ensure`] with a sampling decision: the sampled flag that goes upstream is the
/// parent's when `sampling.respect_parent` and the parent is valid, `sampling.ratio`'s
/// draw otherwise.
///
/// ```
/// use nexus_middleware::trace_context::{Sampling, ensure_with};
/// let mut headers = http::HeaderMap::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// // An internet edge: a client cannot force sampling; the trace id is still continued.
/// let started = ensure_with(&mut headers, &Sampling::new(0.0, false));
/// assert!(!started.ours.sampled());
/// assert_eq!(started.ours.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(started.parent_id, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
/// ```
pub fn ensure_with(headers: &mut HeaderMap, sampling: &Sampling) -> Started {
    // One hash of the name for the lookup and the write (an entry, not `get_all` + `insert`).
    let entry = headers.entry(TRACEPARENT);
    let parent = match &entry {
        http::header::Entry::Occupied(o) => {
            let mut values = o.iter();
            match (values.next(), values.next()) {
                (Some(v), None) => TraceParent::parse(v.as_bytes()),
                _ => None,
            }
        }
        http::header::Entry::Vacant(_) => None,
    };
    let span = nonzero(random_u64()).to_le_bytes();
    let ours = match parent {
        Some(p) => {
            let sampled = if sampling.respect_parent { p.sampled() } else { sampling.draw() };
            TraceParent { parent_id: span, flags: (p.flags & !1) | u8::from(sampled), ..p }
        }
        None => TraceParent { trace_id: new_trace_id(), parent_id: span, flags: u8::from(sampling.draw()) },
    };
    match entry {
        // Replaces every value the client sent.
        http::header::Entry::Occupied(mut o) => drop(o.insert(ours.to_header_value())),
        http::header::Entry::Vacant(v) => drop(v.insert(ours.to_header_value())),
    }
    Started { ours, parent_id: parent.map(|p| p.parent_id) }
}

/// A new random trace id (never all zero).
fn new_trace_id() -> [u8; 16] {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random_u64().to_le_bytes());
    trace_id[8..].copy_from_slice(&nonzero(random_u64()).to_le_bytes());
    trace_id
}

/// A new random span id (never all zero): a client span's, for example.
pub fn new_span_id() -> [u8; 8] {
    nonzero(random_u64()).to_le_bytes()
}

/// A random 64-bit number: splitmix64 over a per-thread state seeded from the OS once.
/// Trace and span ids need to be unique and unlikely to collide, not secret (unlike request
/// ids, which come from `rand`'s ChaCha12): this costs ~10 instructions.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()),
        );
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `n`, or 1 for 0 (an all-zero id is invalid).
fn nonzero(n: u64) -> u64 {
    if n == 0 { 1 } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn only_valid_values_parse() {
        let ok = TraceParent::parse(format!("00-{ID}-00f067aa0ba902b7-01").as_bytes()).unwrap();
        assert_eq!(ok.flags, 1);
        assert_eq!(ok.trace_id_hex(), ID);
        assert_eq!(ok.to_header_value(), format!("00-{ID}-00f067aa0ba902b7-01").as_str());
        assert!(TraceParent::parse(format!("01-{ID}-00f067aa0ba902b7-00-later").as_bytes()).is_some());
        for bad in [
            format!("00-{ID}-00f067aa0ba902b7-01-extra"),
            format!("ff-{ID}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{ID}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", ID.to_uppercase()),
            format!("00-{ID}-00f067aa0ba902b7"),
            format!("01-{ID}-00f067aa0ba902b7-00x"),
            "garbage".into(),
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn one_traceparent_goes_on_continued_or_new() {
        // Continued: same trace and flags, a new parent.
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, format!("00-{ID}-00f067aa0ba902b7-01").parse().unwrap());
        let ours = ensure(&mut h);
        assert_eq!((ours.trace_id_hex().as_str(), ours.flags), (ID, 1));
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        // Absent, invalid, or two of them: a new trace, not sampled.
        let mut seen = std::collections::HashSet::new();
        for incoming in [vec![], vec!["nonsense"], vec![&*format!("00-{ID}-00f067aa0ba902b7-01"), "other"]] {
            let mut h = HeaderMap::new();
            for v in incoming {
                h.append(TRACEPARENT, v.parse().unwrap());
            }
            let ours = ensure(&mut h);
            assert_ne!(ours.trace_id_hex(), ID);
            assert_eq!(ours.flags, 0);
            assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
            assert_eq!(TraceParent::parse(h[TRACEPARENT].as_bytes()), Some(ours));
            assert!(seen.insert(ours.trace_id), "trace ids differ");
        }
    }

    #[test]
    fn sampling_follows_the_parent_or_the_ratio() {
        let sampled_parent = format!("00-{ID}-00f067aa0ba902b7-01");
        let unsampled_parent = format!("00-{ID}-00f067aa0ba902b7-00");
        let run = |incoming: Option<&str>, sampling: Sampling| {
            let mut h = HeaderMap::new();
            if let Some(v) = incoming {
                h.insert(TRACEPARENT, v.parse().unwrap());
            }
            let started = ensure_with(&mut h, &sampling);
            assert_eq!(TraceParent::parse(h[TRACEPARENT].as_bytes()), Some(started.ours));
            started
        };
        // Respected: the parent decides, whatever the ratio.
        assert!(run(Some(&sampled_parent), Sampling::new(0.0, true)).ours.sampled());
        assert!(!run(Some(&unsampled_parent), Sampling::new(1.0, true)).ours.sampled());
        // Not respected: the ratio decides, the trace id and the caller's span are kept.
        let edge = run(Some(&sampled_parent), Sampling::new(0.0, false));
        assert!(!edge.ours.sampled());
        assert_eq!(
            (edge.ours.trace_id_hex().as_str(), edge.parent_id),
            (ID, Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]))
        );
        assert!(run(Some(&unsampled_parent), Sampling::new(1.0, false)).ours.sampled());
        // New traces: the ratio, about right over many draws.
        assert!(run(None, Sampling::new(1.0, true)).ours.sampled());
        let mut h = HeaderMap::new();
        assert!(ensure_with(&mut h, &Sampling::new(1.0, true)).ours.sampled() && is_sampled(&h));
        assert!(!ensure_with(&mut h, &Sampling::new(0.0, false)).ours.sampled() && !is_sampled(&h));
        assert_eq!(run(None, Sampling::new(1.0, true)).parent_id, None);
        let hits = (0..20_000).filter(|_| run(None, Sampling::new(0.25, true)).ours.sampled()).count();
        assert!((4_500..5_500).contains(&hits), "{hits} of 20000 at 0.25");
    }
}
