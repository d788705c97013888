//! The declared lengths of a DICOM file, checked against the bytes that back them before
//! dicom-rs reads it.
//!
//! dicom-rs allocates (and zero-fills) each element's value at the length its header
//! declares, before reading it: a 1 KB file whose PixelData claims 4 GB takes 4 GB of memory
//! per file being read, and on a smaller machine the process is killed. This walk reads only
//! the element headers (values are skipped: seeked over, or read and dropped in a deflated
//! stream) and refuses a length that runs past the end of the data, so no allocation dicom-rs
//! makes can exceed the file's own content.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_dictionary_std::StandardDataDictionary;

/// Explicit VRs whose length field is 2 bytes (PS3.5 7.1.2); every other VR, unknown ones
/// included (dicom-rs reads those as UN), has 2 reserved bytes and a 4-byte length.
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
    b"ST", b"TM", b"UI", b"UL", b"US",
];
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Largest element value taken from a deflated data set.
const MAX_INFLATED: u64 = 256 << 20;

/// How the data set after the file meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Explicit VR, little endian (also RLE, JPEG and other encapsulated syntaxes).
    ExplicitLittle,
    /// Implicit VR, little endian.
    ImplicitLittle,
    /// Explicit VR, big endian (retired, still read by dicom-rs).
    ExplicitBig,
    /// Explicit VR little endian, raw-deflated after the meta group.
    DeflatedExplicitLittle,
}

impl Encoding {
    /// The encoding of transfer syntax `uid`.
    fn of(uid: &str) -> Encoding {
        match uid {
            "1.2.840.10008.1.2" => Encoding::ImplicitLittle,
            "1.2.840.10008.1.2.2" => Encoding::ExplicitBig,
            "1.2.840.10008.1.2.1.99" => Encoding::DeflatedExplicitLittle,
            _ => Encoding::ExplicitLittle,
        }
    }
}

/// Walks the element headers of the Part-10 file at `file` (preamble and `DICM` already
/// checked; the data set's encoding read from the meta group's TransferSyntaxUID) and returns
/// why it must not be read: an element or item whose defined length runs past the end of the
/// data. A file that ends in the middle of a header passes (dicom-rs reports it better).
pub(super) fn check(file: &Path) -> std::io::Result<Option<String>> {
    let mut reader = BufReader::new(std::fs::File::open(file)?);
    let size = reader.get_ref().metadata()?.len();
    reader.seek(SeekFrom::Start(132))?;
    // The meta group is explicit VR little endian in every syntax.
    let mut source = Source::Seekable { reader, size };
    let mut encoding = Encoding::ExplicitLittle;
    let mut rle = false;
    // dicom-object reads the meta group as far as its group length (0002,0000) says, whatever
    // the tags inside; the walk does the same, so that both start the data set at one byte.
    // The standard's first element, (0002,0000) UL of 4 bytes, is required as it is: dicom-object
    // checks only the tag and the length, so anything else is refused here rather than
    // guessed at.
    let mut first = [0u8; 12];
    if !source.read_exact_or_end(&mut first)? || first[..8] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
        return Ok(Some(
            "the file meta group does not open with its group length (0002,0000) UL".to_string(),
        ));
    }
    let meta_end = source.position()? + u64::from(u32::from_le_bytes([first[8], first[9], first[10], first[11]]));
    while source.position()? < meta_end {
        let mut tag = [0u8; 4];
        if !source.read_exact_or_end(&mut tag)? {
            return Ok(None);
        }
        if tag == [0x02, 0x00, 0x10, 0x00] {
            // TransferSyntaxUID: VR UI, a 2-byte length, at most 64 characters.
            let mut header = [0u8; 4];
            if !source.read_exact_or_end(&mut header)? {
                return Ok(None);
            }
            if header[..2] != *b"UI" {
                let vr = String::from_utf8_lossy(&header[..2]);
                return Ok(Some(format!("TransferSyntaxUID of VR {vr:?} (it is UI)")));
            }
            let length = u16::from_le_bytes([header[2], header[3]]);
            if length > 64 {
                return Ok(Some(format!(
                    "TransferSyntaxUID of {length} bytes (a UID has at most 64)"
                )));
            }
            let mut uid = vec![0u8; usize::from(length)];
            if !source.read_exact_or_end(&mut uid)? {
                return Ok(None);
            }
            let uid = String::from_utf8_lossy(&uid);
            let uid = uid.trim_end_matches(['\0', ' ']);
            encoding = Encoding::of(uid);
            rle = uid == "1.2.840.10008.1.2.5";
            continue;
        }
        if let Some(why) = element(&mut source, tag, Encoding::ExplicitLittle, &mut Fragments::default())? {
            return Ok(Some(why));
        }
    }
    let mut fragments = Fragments { rle, seen: None };
    if encoding == Encoding::DeflatedExplicitLittle {
        let Source::Seekable { reader, .. } = source else {
            return Ok(None);
        };
        source = Source::Stream(Box::new(flate2::read::DeflateDecoder::new(reader)));
    }
    loop {
        let mut tag = [0u8; 4];
        if !source.read_exact_or_end(&mut tag)? {
            return Ok(None);
        }
        if let Some(why) = element(&mut source, tag, encoding, &mut fragments)? {
            return Ok(Some(why));
        }
    }
}

/// Bytes per number of a binary VR (1 for text and byte VRs).
fn value_size(vr: [u8; 2]) -> u64 {
    match &vr {
        b"AT" | b"FL" | b"OF" | b"OL" | b"SL" | b"UL" => 4,
        b"FD" | b"OD" | b"OV" | b"SV" | b"UV" => 8,
        b"OW" | b"SS" | b"US" => 2,
        _ => 1,
    }
}

/// Where the walk is in encapsulated pixel data, for RLE's frame headers.
#[derive(Debug, Default)]
struct Fragments {
    /// The data set is RLE Lossless.
    rle: bool,
    /// Items seen since encapsulated PixelData began (`None` outside it).
    seen: Option<u32>,
}

/// Reads the rest of one element header after its `tag` and skips its value when the length
/// is defined; `Some(why)` when the length runs past the data.
fn element(
    source: &mut Source,
    tag: [u8; 4],
    encoding: Encoding,
    fragments: &mut Fragments,
) -> std::io::Result<Option<String>> {
    let big = encoding == Encoding::ExplicitBig;
    let u16_of = |b: [u8; 2]| {
        if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_of = |b: [u8; 4]| {
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let (group, number) = (u16_of([tag[0], tag[1]]), u16_of([tag[2], tag[3]]));
    let mut word = [0u8; 4];
    // Items and delimiters carry no VR in any syntax.
    // The VR: the header's, or in an implicit data set the dictionary's, as dicom-rs takes it.
    let mut vr = [0u8; 2];
    let length = if group == 0xFFFE || encoding == Encoding::ImplicitLittle {
        if !source.read_exact_or_end(&mut word)? {
            return Ok(None);
        }
        vr = match StandardDataDictionary.by_tag(Tag(group, number)).map(|e| e.vr()) {
            Some(VirtualVr::Exact(exact)) => exact.to_bytes(),
            Some(VirtualVr::Xs | VirtualVr::Lt) => *b"US",
            _ => *b"OB",
        };
        u32_of(word)
    } else {
        if !source.read_exact_or_end(&mut vr)? {
            return Ok(None);
        }
        if !SHORT_VRS.contains(&&vr) {
            // 2 reserved bytes, then the length.
            let mut long = [0u8; 6];
            if !source.read_exact_or_end(&mut long)? {
                return Ok(None);
            }
            u32_of([long[2], long[3], long[4], long[5]])
        } else {
            let mut short = [0u8; 2];
            if !source.read_exact_or_end(&mut short)? {
                return Ok(None);
            }
            u32::from(u16_of(short))
        }
    };
    // Undefined lengths (sequences, encapsulated pixel data, their items) and delimiters:
    // what follows is more headers, walked in turn.
    match (group, number) {
        (0x7FE0, 0x0010) if length == UNDEFINED => fragments.seen = Some(0),
        (0xFFFE, 0xE0DD) => fragments.seen = None,
        _ => {}
    }
    // Delimiters have length 0; outside a sequence dicom-rs reads one's length as a value.
    if group == 0xFFFE && number != 0xE000 && length != 0 {
        return Ok(Some(format!(
            "delimiter (FFFE,{number:04X}) of length {length} (it is 0)"
        )));
    }
    if length == UNDEFINED || (group == 0xFFFE && number != 0xE000) {
        return Ok(None);
    }
    // dicom-rs reads binary values as whole numbers of their element size and leaves the rest
    // of the length unread, so a length that is not a multiple (invalid DICOM) would shift
    // its parse away from this walk.
    let size = value_size(vr);
    if group != 0xFFFE && u64::from(length) % size != 0 {
        let vr = String::from_utf8_lossy(&vr);
        return Ok(Some(format!(
            "element ({group:04X},{number:04X}) of VR {vr} has {length} bytes, not a multiple of {size}"
        )));
    }
    let mut rest = u64::from(length);
    if let (true, 0xFFFE, Some(seen)) = (fragments.rle, group, fragments.seen.as_mut()) {
        *seen += 1;
        // After the basic offset table, each item is a frame opening with its number of
        // segments: at most 15 (PS3.5 G.3.1). dicom-rs allocates a vector of that many
        // offsets before looking further (16 GB for a count of 2^32 - 1).
        if *seen > 1 && rest >= 4 {
            let mut count = [0u8; 4];
            if !source.read_exact_or_end(&mut count)? {
                return Ok(None);
            }
            let segments = u32::from_le_bytes(count);
            if segments > 15 {
                return Ok(Some(format!("an RLE frame of {segments} segments (at most 15)")));
            }
            rest -= 4;
        }
    }
    Ok(source.skip(rest)?.then(|| {
        format!("element ({group:04X},{number:04X}) declares {length} bytes, more than the file holds after it (or, deflated, more than 256 MiB)")
    }))
}

/// The bytes after the preamble: a file (seek over values, compare with its size) or a
/// deflate stream (read and drop values).
enum Source {
    Seekable {
        reader: BufReader<std::fs::File>,
        size: u64,
    },
    Stream(Box<dyn Read>),
}

impl Source {
    /// Fills `buf`; `false` at the end of the data (also in the middle of `buf`).
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let reader: &mut dyn Read = match self {
            Source::Seekable { reader, .. } => reader,
            Source::Stream(stream) => stream,
        };
        match reader.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The offset in the file (only used before any stream starts; 0 in a stream).
    fn position(&mut self) -> std::io::Result<u64> {
        match self {
            Source::Seekable { reader, .. } => reader.stream_position(),
            Source::Stream(_) => Ok(0),
        }
    }

    /// Skips `n` bytes; `true` if the data ends before them.
    fn skip(&mut self, n: u64) -> std::io::Result<bool> {
        match self {
            Source::Seekable { reader, size } => {
                let at = reader.stream_position()?;
                if n > size.saturating_sub(at) {
                    return Ok(true);
                }
                reader.seek_relative(n as i64)?;
                Ok(false)
            }
            Source::Stream(stream) => {
                // Inflated bytes can exist and still be a bomb: no element of one slice
                // needs more than MAX_INFLATED (8192 x 8192 pixels of 4 bytes; a CT slice's
                // pixel data is 0.5 MB).
                if n > MAX_INFLATED {
                    return Ok(true);
                }
                let copied = std::io::copy(&mut stream.take(n), &mut std::io::sink())?;
                Ok(copied < n)
            }
        }
    }
}
