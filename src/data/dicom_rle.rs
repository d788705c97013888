//! The RLE Lossless frames of a DICOM file, checked before dicom-rs decodes them (PS3.5
//! annex G): dicom-rs 0.10.1 allocates as many segment offsets as the frame's header counts,
//! and indexes past a segment that decodes to fewer bytes than the frame needs (a panic the
//! fuzzer found, rle_lossless.rs:119). An honest frame passes both checks.

/// Checks one RLE frame (`fragment`, one per frame) of `pixels` pixels: a 64-byte header
/// counting at most 15 segments, and every segment within the frame decoding (PackBits) to
/// at least `pixels` bytes.
pub(super) fn check_frame(fragment: &[u8], pixels: usize) -> Result<(), String> {
    let word = |at: usize| {
        fragment
            .get(at..at + 4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
    };
    let segments = word(0);
    if fragment.len() < 64 || segments.is_none_or(|n| n > 15) {
        let segments = segments.map_or_else(|| "no".to_string(), |n| n.to_string());
        return Err(format!(
            "an RLE frame of {} bytes and {segments} segments (a 64-byte header, at most 15)",
            fragment.len()
        ));
    }
    let count = segments.unwrap_or(0);
    for k in 0..count {
        let start = word(4 + 4 * k).unwrap_or(0);
        let end = if k + 1 < count {
            word(8 + 4 * k).unwrap_or(0)
        } else {
            fragment.len()
        };
        // Offsets out of order or past the frame: dicom-rs refuses those itself.
        let Some(segment) = fragment.get(start..end) else {
            continue;
        };
        let decoded = packbits_len(segment, pixels);
        if decoded < pixels {
            return Err(format!(
                "RLE segment {k} decodes to {decoded} bytes, fewer than the frame's {pixels} pixels"
            ));
        }
    }
    Ok(())
}

/// The bytes PackBits `segment` decodes to, counting up to `cap`: a header byte `n` in
/// 0..=127 copies the next `n + 1` bytes, 129..=255 repeats the next byte `257 - n` times,
/// 128 does nothing. A run cut short by the segment's end counts nothing.
fn packbits_len(segment: &[u8], cap: usize) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while at < segment.len() && out < cap {
        let n = usize::from(segment[at]);
        at += 1;
        match n {
            0..=127 if at + n < segment.len() => {
                at += n + 1;
                out += n + 1;
            }
            129..=255 if at < segment.len() => {
                at += 1;
                out += 257 - n;
            }
            128 => {}
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_lengths() {
        // 3 literals, a run of 4, a no-op, a literal of 1.
        assert_eq!(packbits_len(&[2, 9, 8, 7, 253, 5, 128, 0, 1], 100), 3 + 4 + 1);
        // A literal cut short counts nothing; a run without its byte neither.
        assert_eq!(packbits_len(&[4, 1, 2], 100), 0);
        assert_eq!(packbits_len(&[0, 1, 255], 100), 1);
        // Counting stops at the cap.
        assert_eq!(packbits_len(&[129, 0, 129, 0], 100), 256);
        assert_eq!(packbits_len(&[129, 0, 129, 0], 10), 128);
    }

    #[test]
    fn frames_whose_segments_fall_short_are_refused() {
        let mut frame = vec![0u8; 64];
        frame[0] = 1; // one segment
        frame[4] = 64; // at byte 64
        frame.extend_from_slice(&[253, 7]); // a run of 4
        assert!(check_frame(&frame, 4).is_ok());
        let err = check_frame(&frame, 6).unwrap_err();
        assert!(err.contains("segment 0 decodes to 4 bytes"), "{err}");
        frame[0] = 16;
        assert!(check_frame(&frame, 4).unwrap_err().contains("16 segments"));
    }
}
