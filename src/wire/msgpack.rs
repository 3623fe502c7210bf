//! A structural MessagePack validator run before any payload reaches `rmp-serde`.
//!
//! `rmp-serde` hands the element count an array or map *declares* to serde as a size hint,
//! and serde pre-allocates up to 1 MiB per collection from that hint before a single
//! element has been read. Nested declarations multiply that: a 5 KiB control payload of
//! nested `array32` headers each claiming 2^32 - 1 elements would make the decoder reserve
//! ~1 MiB per level (up to rmp-serde's depth limit of 1024, i.e. about 1 GiB).
//!
//! [`validate`] walks the encoding once, iteratively (no recursion), and accepts only
//! payloads that are exactly one well-formed value whose nesting is at most
//! [`MAX_DEPTH`] and whose every declared length is actually present. After it passes,
//! every declared element count is backed by at least one byte of input each, so the
//! total pre-allocation is proportional to the payload (itself bounded by
//! [`MAX_CONTROL_LEN`](super::MAX_CONTROL_LEN)).
//!
//! Format reference: <https://github.com/msgpack/msgpack/blob/master/spec.md>.

/// Deepest nesting of arrays and maps accepted in a hello or control payload.
///
/// The deepest structure this version sends is 3 levels (hello map → capabilities map →
/// one protocol's capabilities map). 16 leaves newer versions room for richer control
/// messages while keeping the validator's stack tiny.
pub(crate) const MAX_DEPTH: usize = 16;

/// Checks that `p` is exactly one well-formed MessagePack value of nesting depth at most
/// [`MAX_DEPTH`], with no trailing bytes. Returns a description of the first problem.
pub(crate) fn validate(p: &[u8]) -> Result<(), String> {
    // `pending[i]` = values still expected inside the i-th open container. The bottom
    // entry is the single top-level value.
    let mut pending: Vec<u64> = Vec::with_capacity(MAX_DEPTH + 1);
    pending.push(1);
    let mut pos = 0usize;
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let (skip, children) = item_at(p, pos)?;
        pos = pos
            .checked_add(skip)
            .filter(|end| *end <= p.len())
            .ok_or_else(|| format!("value at offset {pos} runs past the end of the payload"))?;
        if children > 0 {
            // Each child takes at least one byte: reject impossible counts up front.
            if children > (p.len() - pos) as u64 {
                return Err(format!(
                    "container at offset {pos} declares {children} elements but only {} bytes follow",
                    p.len() - pos
                ));
            }
            if pending.len() > MAX_DEPTH {
                return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
            }
            pending.push(children);
        }
    }
    if pos != p.len() {
        return Err(format!("{} trailing bytes after the value", p.len() - pos));
    }
    Ok(())
}

/// Whether the (validated) value in `p` is a map.
pub(crate) fn is_map(p: &[u8]) -> bool {
    matches!(p.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Reads the value header at `pos`: returns (bytes to skip over the header and any inline
/// data, number of nested values that follow).
fn item_at(p: &[u8], pos: usize) -> Result<(usize, u64), String> {
    let truncated = || format!("truncated at offset {pos}");
    let m = *p.get(pos).ok_or_else(truncated)?;
    // Big-endian unsigned integer of `n` bytes right after the marker.
    let len_field = |n: usize| -> Result<u64, String> {
        let bytes = p.get(pos + 1..pos + 1 + n).ok_or_else(truncated)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let as_usize = |v: u64| usize::try_from(v).map_err(|_| truncated());
    Ok(match m {
        // positive fixint, negative fixint, nil, false, true
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0),
        0x80..=0x8f => (1, 2 * u64::from(m & 0x0f)),   // fixmap
        0x90..=0x9f => (1, u64::from(m & 0x0f)),       // fixarray
        0xa0..=0xbf => (1 + usize::from(m & 0x1f), 0), // fixstr
        0xc1 => return Err(format!("reserved marker 0xc1 at offset {pos}")),
        0xc4 | 0xd9 => (2 + as_usize(len_field(1)?)?, 0), // bin8, str8
        0xc5 | 0xda => (3 + as_usize(len_field(2)?)?, 0), // bin16, str16
        0xc6 | 0xdb => (5usize.saturating_add(as_usize(len_field(4)?)?), 0), // bin32, str32
        0xc7 => (3 + as_usize(len_field(1)?)?, 0),        // ext8: len, type, data
        0xc8 => (4 + as_usize(len_field(2)?)?, 0),        // ext16
        0xc9 => (6usize.saturating_add(as_usize(len_field(4)?)?), 0), // ext32
        0xca => (5, 0),                                   // float32
        0xcb => (9, 0),                                   // float64
        0xcc | 0xd0 => (2, 0),                            // uint8, int8
        0xcd | 0xd1 => (3, 0),                            // uint16, int16
        0xce | 0xd2 => (5, 0),                            // uint32, int32
        0xcf | 0xd3 => (9, 0),                            // uint64, int64
        0xd4 => (3, 0),                                   // fixext1
        0xd5 => (4, 0),                                   // fixext2
        0xd6 => (6, 0),                                   // fixext4
        0xd7 => (10, 0),                                  // fixext8
        0xd8 => (18, 0),                                  // fixext16
        0xdc => (3, len_field(2)?),                       // array16
        0xdd => (5, len_field(4)?),                       // array32
        0xde => (3, 2 * len_field(2)?),                   // map16
        0xdf => (5, 2 * len_field(4)?),                   // map32
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_values() {
        for v in [
            &[0xc0][..],
            &[0x93, 0x01, 0xa1, b'x', 0xc3],
            &[0x81, 0xa1, b'k', 0x92, 0xcd, 0x01, 0x00, 0xc4, 0x01, 0xff],
            &[0xdc, 0x00, 0x02, 0xca, 0, 0, 0, 0, 0xd4, 1, 2],
        ] {
            assert_eq!(validate(v), Ok(()), "{v:02x?}");
        }
        let encoded = rmp_serde::to_vec_named(&vec![(1u8, "a"), (2, "b")]).unwrap();
        assert_eq!(validate(&encoded), Ok(()));
    }

    #[test]
    fn rejects_truncation_trailing_bytes_and_reserved_marker() {
        assert!(validate(&[]).is_err());
        assert!(validate(&[0x92, 0x01]).is_err());
        assert!(validate(&[0xa3, b'a']).is_err());
        assert!(validate(&[0xdb, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(validate(&[0x01, 0x02]).unwrap_err().contains("trailing"));
        assert!(validate(&[0xc1]).unwrap_err().contains("0xc1"));
    }

    #[test]
    fn rejects_declared_lengths_not_backed_by_bytes() {
        let err = validate(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).unwrap_err();
        assert!(err.contains("declares"), "{err}");
        assert!(validate(&[0xdf, 0x80, 0x00, 0x00, 0x00]).is_err());
    }

    #[test]
    fn rejects_deep_nesting_without_recursing() {
        let ok = [vec![0x91; MAX_DEPTH], vec![0xc0]].concat();
        assert_eq!(validate(&ok), Ok(()));
        let deep = [vec![0x91; MAX_DEPTH + 1], vec![0xc0]].concat();
        assert!(validate(&deep).unwrap_err().contains("nesting"));
        let very_deep = [vec![0x91; 1_000_000], vec![0xc0]].concat();
        assert!(validate(&very_deep).is_err());
    }
}
