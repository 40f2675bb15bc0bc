//! Lower-case hex digits for the ids the gateway makes on every request (`X-Request-Id`,
//! `traceparent`): one table load per byte.

/// The two lower-case hex digits of each byte value.
const HEX: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// Lower-case hex of `bytes` into `out` (twice as long): one table load per byte, and no
/// bounds check per digit.
pub(crate) fn encode(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX[usize::from(*b)]);
    }
}

/// An id of hex digits and dashes as a field value, its bytes in one allocation that clones
/// share (a request id goes on the request, the answer, an error body): `HeaderValue::from_bytes`
/// would copy them into a vector, which the first clone turns into a shared buffer with a second
/// allocation. Not inlined: inlined into `request_id::generate`, the value check of the bytes
/// was not vectorised (callgrind: 90 instructions instead of 35).
#[inline(never)]
pub(crate) fn header_value<const N: usize>(id: [u8; N]) -> http::HeaderValue {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id)).expect("hex digits and dashes are a valid value")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_is_two_lower_case_digits() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        super::encode(&bytes, &mut out);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }
}
