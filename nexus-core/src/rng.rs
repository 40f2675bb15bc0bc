//! A lock-free, seedable random source for every random choice the gateway
//! makes (balancing, weighted splits, retry jitter), so tests can fix the seed.
//!
//! ```
//! use nexus_core::rng::Rng;
//! let a = Rng::seeded(7);
//! let b = Rng::seeded(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! assert!(a.below(10) < 10);
//! assert!((0.0..1.0).contains(&a.unit()));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// A lock-free, seedable pseudo-random source (SplitMix64 over an atomic counter).
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    /// A generator with a fixed seed: the same sequence every time.
    pub const fn seeded(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A generator seeded from the OS.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // std's RandomState is seeded from the OS once per process, then varied per instance.
        Self::seeded(std::collections::hash_map::RandomState::new().build_hasher().finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        // 53 random bits: every value is exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next_u64() >> 11) as f64;
        x / (1u64 << 53) as f64
    }

    /// A number in `[0, n)` (0 when `n` is 0).
    pub fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A copy of `input` with up to `changes` bytes replaced by bytes of `alphabet`, then cut
    /// at a random length: inputs for robustness tests of parsers (the HTTP/1 head parsers
    /// are tested this way).
    ///
    /// ```
    /// let rng = nexus_core::rng::Rng::seeded(1);
    /// let out = rng.mutate(b"GET / HTTP/1.1\r\n\r\n", b"\r\n:", 2);
    /// assert!(out.len() <= 18);
    /// ```
    pub fn mutate(&self, input: &[u8], alphabet: &[u8], changes: usize) -> Vec<u8> {
        let mut out = input.to_vec();
        let pick = |n: usize| usize::try_from(self.below(n as u64)).unwrap_or(0);
        if !out.is_empty() && !alphabet.is_empty() {
            for _ in 0..pick(changes + 1) {
                let at = pick(out.len());
                out[at] = alphabet[pick(alphabet.len())];
            }
        }
        out.truncate(pick(out.len() + 1));
        out
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::from_entropy()
    }
}
