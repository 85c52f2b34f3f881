//! Equality of secrets and tokens in constant time: how long a comparison takes depends on
//! the lengths only, never on where the bytes differ.

/// Whether `a` and `b` are equal. Unequal lengths are answered at once (a length is not the
/// secret); equal ones are compared whole, eight bytes at a time, every word's difference
/// folded through [`std::hint::black_box`] so that no early exit can be compiled in.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (words_a, words_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (x, y) in words_a.remainder().iter().zip(words_b.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in words_a.zip(words_b) {
        let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("eight bytes"));
        diff = std::hint::black_box(diff | (word(x) ^ word(y)));
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::eq;

    #[test]
    fn equal_only_when_every_byte_is() {
        let a: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in [0, 1, 7, 8, 9, 31, 64, 999, 1000] {
            assert!(eq(&a[..len], &a[..len]), "{len}");
            for i in 0..len {
                let mut b = a[..len].to_vec();
                b[i] ^= 0x80;
                assert!(!eq(&a[..len], &b), "{len} {i}");
            }
        }
        assert!(!eq(b"abc", b"abcd"));
        assert!(!eq(b"", b"a"));
    }
}
