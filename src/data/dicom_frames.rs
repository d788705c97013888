//! A compressed DICOM frame, checked against its slice's header before dicom-rs decodes it.
//!
//! dicom-rs 0.10.1's decoders size their work by the frame, not by the header: the RLE
//! decoder allocates as many segment offsets as the frame's header counts, decodes each
//! segment whole (a 4 MB segment of runs became 272 MB) and indexes past a segment shorter
//! than the frame (a panic); the JPEG decoder allocates the image its own frame header (SOF)
//! declares (a 1 KB fragment declaring 32768 x 32768 took 2.2 GB) and fills what it lacks
//! with zeros. So each frame must say what the slice's header says: an RLE frame of at most
//! 15 segments, each decoding to the slice's pixel count (one more byte of padding allowed);
//! a JPEG frame of the slice's rows, columns, samples and a precision its bits hold.
//! An honest frame passes.

/// What the slice's header says of its one frame.
pub(super) struct Frame {
    pub rows: usize,
    pub columns: usize,
    /// `BitsAllocated`.
    pub bits: i64,
    /// `SamplesPerPixel`.
    pub samples: i64,
}

/// The RLE Lossless transfer syntax.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// The JPEG processes dicom-rs decodes (baseline, extended, lossless, lossless SV1) share
/// this prefix: 1.2.840.10008.1.2.4.50 to .70.
const JPEG_PREFIX: &str = "1.2.840.10008.1.2.4.";

/// Checks the fragments of a frame in transfer syntax `uid` against `frame`.
pub(super) fn check(uid: &str, fragments: &[Vec<u8>], frame: &Frame) -> Result<(), String> {
    let pixels = frame.rows * frame.columns;
    if uid == RLE_LOSSLESS {
        return fragments.iter().try_for_each(|f| check_rle(f, pixels));
    }
    let jpeg = uid
        .strip_prefix(JPEG_PREFIX)
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (50..=70).contains(&n));
    if jpeg {
        let first = fragments.first().map_or(&[][..], Vec::as_slice);
        // A frame may span several fragments (DCMTK's `+fs`, some vendors): the coded data
        // goes on in the fragments after the first.
        let more: usize = fragments.iter().skip(1).map(Vec::len).sum();
        return check_jpeg(first, more, frame);
    }
    Ok(())
}

/// One RLE frame (`fragment`) of `pixels` pixels: a 64-byte header counting at most 15
/// segments, and every segment within the frame decoding (PackBits) to `pixels` bytes, or
/// one more.
fn check_rle(fragment: &[u8], pixels: usize) -> Result<(), String> {
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
        let decoded = packbits_len(segment, pixels + 2);
        if decoded < pixels {
            return Err(format!(
                "RLE segment {k} decodes to {decoded} bytes, fewer than the frame's {pixels} pixels"
            ));
        }
        if decoded > pixels + 1 {
            return Err(format!(
                "RLE segment {k} decodes to more than the frame's {pixels} pixels"
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

/// A JPEG frame: its first frame header (SOF0-SOF15 but DHT, JPG and DAC) before the first
/// scan must declare the slice's rows, columns and samples, and a sample precision of 8 bits
/// in an 8-bit slice, 9 to 16 in a 16-bit one (dicom-rs joins two 8-bit samples into one
/// 16-bit pixel otherwise).
fn check_jpeg(stream: &[u8], more: usize, frame: &Frame) -> Result<(), String> {
    let sof = jpeg_frame_header(stream).ok_or("the JPEG frame has no frame header (SOF) before its first scan")?;
    let (precision, height, width, components, _) = sof;
    let bits_fit = match frame.bits {
        8 => precision <= 8,
        16 => (9..=16).contains(&precision),
        _ => false,
    };
    if (height, width) != (frame.rows, frame.columns) || i64::from(components) != frame.samples || !bits_fit {
        return Err(format!(
            "the JPEG frame declares {height} x {width} pixels of {components} samples at {precision} bits; the \
             slice's header says {} x {} pixels of {} samples in {} bits",
            frame.rows, frame.columns, frame.samples, frame.bits
        ));
    }
    // The decoder fills a stream that ends early with zero bits, silently. Every sample of a
    // lossless scan is coded with at least one bit (a Huffman code), every 8 x 8 block of a
    // DCT scan too (its DC difference): a shorter stream was cut.
    let lossless = matches!(sof.4, 0xC3 | 0xC7 | 0xCB | 0xCF);
    let units = match lossless {
        true => height.saturating_mul(width),
        false => height.div_ceil(8).saturating_mul(width.div_ceil(8)),
    };
    let coded = jpeg_scan_bytes(stream).unwrap_or(0).saturating_add(more);
    if coded.saturating_mul(8) < units {
        return Err(format!(
            "the JPEG frame holds {coded} bytes of coded data for {units} {}, at least one bit each: a truncated frame",
            if lossless { "samples" } else { "blocks" }
        ));
    }
    Ok(())
}

/// The marker segments of `stream` from SOI up to its first scan header (SOS) included:
/// `(marker, body)`, the body being the segment's bytes after its length field (for SOS,
/// its header; the coded data follows it). Ends early at EOI or at bytes that are not a
/// marker segment.
fn jpeg_segments(stream: &[u8]) -> impl Iterator<Item = (u8, std::ops::Range<usize>)> + '_ {
    let mut at = if stream.get(..2) == Some(&[0xFF, 0xD8]) {
        2
    } else {
        usize::MAX
    };
    std::iter::from_fn(move || {
        loop {
            // Fill bytes (0xFF) may precede a marker.
            while stream.get(at) == Some(&0xFF) && stream.get(at.checked_add(1)?) == Some(&0xFF) {
                at += 1;
            }
            let (&mark, &code) = (stream.get(at)?, stream.get(at + 1)?);
            if mark != 0xFF || code == 0xD9 {
                at = usize::MAX;
                return None;
            }
            at += 2;
            // Markers without a length: TEM, RST0-7, SOI.
            if matches!(code, 0x01 | 0xD0..=0xD8) {
                continue;
            }
            let length = usize::from(u16::from_be_bytes([*stream.get(at)?, *stream.get(at + 1)?]));
            let body = at + 2..at.checked_add(length)?;
            if length < 2 || body.end > stream.len() {
                at = usize::MAX;
                return None;
            }
            // Nothing after the first scan's header is a segment of the frame's header.
            at = if code == 0xDA { usize::MAX } else { body.end };
            return Some((code, body));
        }
    })
}

/// The bytes of `stream` after its first scan header (SOS), up to its end marker (EOI) if
/// any: the coded data; `None` without a scan.
fn jpeg_scan_bytes(stream: &[u8]) -> Option<usize> {
    let (_, sos) = jpeg_segments(stream).find(|(code, _)| *code == 0xDA)?;
    let rest = &stream[sos.end..];
    Some(rest.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap_or(rest.len()))
}

/// `(precision, height, width, components, marker)` of the first SOF marker segment of
/// `stream` (SOF0-SOF15 but DHT, JPG and DAC); `None` if a scan (SOS) or the end comes first.
fn jpeg_frame_header(stream: &[u8]) -> Option<(u8, usize, usize, u8, u8)> {
    let (code, body) = jpeg_segments(stream)
        .take_while(|(code, _)| *code != 0xDA)
        .find(|(code, _)| matches!(code, 0xC0..=0xCF) && !matches!(code, 0xC4 | 0xC8 | 0xCC))?;
    let body = &stream[body];
    if body.len() < 6 {
        return None;
    }
    let height = usize::from(u16::from_be_bytes([body[1], body[2]]));
    let width = usize::from(u16::from_be_bytes([body[3], body[4]]));
    Some((body[0], height, width, body[5], code))
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
        assert_eq!(packbits_len(&[129, 0, 129, 0], 300), 256);
        assert_eq!(packbits_len(&[129, 0, 129, 0], 10), 128);
    }

    #[test]
    fn rle_frames_must_decode_to_their_pixels() {
        let mut frame = vec![0u8; 64];
        frame[0] = 1; // one segment
        frame[4] = 64; // at byte 64
        frame.extend_from_slice(&[253, 7]); // a run of 4
        assert!(check_rle(&frame, 4).is_ok());
        assert!(check_rle(&frame, 3).is_ok(), "one byte of padding");
        let err = check_rle(&frame, 6).unwrap_err();
        assert!(err.contains("segment 0 decodes to 4 bytes"), "{err}");
        let err = check_rle(&frame, 2).unwrap_err();
        assert!(err.contains("more than the frame's 2 pixels"), "{err}");
        frame[0] = 16;
        assert!(check_rle(&frame, 4).unwrap_err().contains("16 segments"));
    }

    #[test]
    fn jpeg_frame_headers_must_match_the_slice() {
        // SOI, an APP0 of 4 bytes, fill, SOF0: 8 bits, 6 x 5 pixels, 1 component.
        let mut stream = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 1, 2, 0xFF];
        stream.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8, 0, 6, 0, 5, 1, 1, 0x11, 0]);
        stream.extend_from_slice(&[0xFF, 0xDA, 0, 2]);
        // One byte of coded data (one 8 x 8 block), then EOI.
        stream.extend_from_slice(&[0x5A, 0xFF, 0xD9]);
        assert_eq!(jpeg_frame_header(&stream), Some((8, 6, 5, 1, 0xC0)));
        assert_eq!(jpeg_scan_bytes(&stream), Some(1));
        let slice = |rows, columns, bits| Frame {
            rows,
            columns,
            bits,
            samples: 1,
        };
        assert!(check_jpeg(&stream, 0, &slice(6, 5, 8)).is_ok());
        assert!(
            check_jpeg(&stream, 0, &slice(5, 6, 8))
                .unwrap_err()
                .contains("6 x 5 pixels")
        );
        assert!(
            check_jpeg(&stream, 0, &slice(6, 5, 16)).is_err(),
            "8-bit samples in a 16-bit slice"
        );
        // A scan before any frame header, and no SOI.
        assert!(check_jpeg(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2], 0, &slice(6, 5, 8)).is_err());
        assert!(check_jpeg(&[0, 1, 2], 0, &slice(6, 5, 8)).is_err());
        // Checked by syntax: RLE and JPEG only.
        assert!(check("1.2.840.10008.1.2.1", &[vec![1, 2, 3]], &slice(6, 5, 8)).is_ok());
        assert!(check("1.2.840.10008.1.2.4.57", &[stream.clone()], &slice(6, 5, 16)).is_err());
        assert!(check("1.2.840.10008.1.2.4.50", &[stream.clone()], &slice(6, 5, 8)).is_ok());
        // The same frame as lossless (SOF3): 30 samples need at least 4 bytes, not 1.
        let at = stream.iter().position(|&b| b == 0xC0).unwrap();
        stream[at] = 0xC3;
        assert!(
            check_jpeg(&stream, 0, &slice(6, 5, 8))
                .unwrap_err()
                .contains("truncated frame")
        );
    }
}
