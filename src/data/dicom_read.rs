//! Opening one DICOM file with every allocation bounded by the bytes behind it.
//!
//! dicom-rs allocates (and zero-fills) each value at the length its header declares before
//! reading it: a 1 KB file whose PixelData claims 4 GB takes 4 GB per file being read. The
//! parse here is dicom-rs's own (its meta-group reader, its data set reader and stateful
//! decoder); this file only hands it a decoder, [`Bounded`], that refuses any value, item or
//! skip longer than what is left of the data set before the inner decoder allocates for it.
//! What is left: the file's remaining bytes, or for a deflated data set the most it can
//! inflate to (1032 times its compressed bytes, and at most
//! [`ReadLimits::max_inflated_bytes`] for the whole file). The meta group, which dicom-rs
//! reads with its own reader, is read into memory first (at most [`MAX_META`] bytes, and no
//! more than the file holds), its element headers decoded by dicom-rs's decoder and each
//! length checked against what is left of the group, then given to dicom-rs whole.
//!
//! The data set is read as a flat loop over dicom-rs's tokens ([`collect`]): the top-level
//! elements a pass needs are kept, sequences are walked and dropped (never built into nested
//! objects, which dicom-object does by recursion), values not kept are skipped unread, and at most [`MAX_ELEMENTS`] elements and
//! [`MAX_FRAGMENTS`] pixel fragments are kept. So no allocation made while reading a file
//! exceeds the file's own content (inflated, for deflated files), whatever the header says,
//! and what is kept is bounded by the file and those counts; the fuzz targets `dicom` and
//! `dicom_series` run under a malloc limit to keep it so.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use dicom_core::VR;
use dicom_core::header::{DataElementHeader, SequenceItemHeader, Tag};
use dicom_core::value::PixelFragmentSequence;
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_encoding::Codec;
use dicom_encoding::decode::Decode;
use dicom_encoding::decode::explicit_le::ExplicitVRLittleEndianDecoder;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTable, InMemDicomObject};
use dicom_parser::dataset::DataToken;
use dicom_parser::dataset::read::DataSetReaderOptions;
use dicom_parser::stateful::decode::{CharacterSetOverride, Error as DecodeError, Result as DecodeResult};
use dicom_parser::{DataSetReader, DynStatefulDecoder, StatefulDecode};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::preprocess::{MAX_DEFLATE_RATIO, ReadLimits};

/// Largest file meta group read (real ones have a few hundred bytes).
pub(super) const MAX_META: u32 = 1 << 20;
/// Preamble (128 bytes) and `DICM`.
const PREAMBLE: u64 = 132;

/// A file's meta group and data set decoder, positioned at the data set's first element.
struct Opened {
    meta: FileMetaTable,
    decoder: Bounded<DynStatefulDecoder<Box<dyn Read>>>,
}

/// Top-level elements kept of a file (more is refused: a slice has a few hundred).
const MAX_ELEMENTS: usize = 10_000;
/// Fragments kept of an encapsulated pixel data element (one frame is read).
const MAX_FRAGMENTS: usize = 65_536;
/// Sequences nested deeper are refused (real data sets nest a few levels).
const MAX_DEPTH: usize = 64;

/// The header of the file at `file`: its meta group and the top-level elements `keep`
/// chooses, up to the pixel data, with the pixel data's declared length (`None` when it is
/// absent or encapsulated). An encapsulated pixel data's fragments are kept too (compressed,
/// bounded by the file), so that its frame can be checked before a volume is allocated.
pub(super) fn read_header(
    file: &Path,
    limits: &ReadLimits,
    keep: fn(Tag) -> bool,
) -> Result<(DefaultDicomObject, Option<u32>), String> {
    collect(open(file, limits, keep)?, false)
}

/// The file at `file` with the top-level elements `keep` chooses and its pixel data (native,
/// or the fragments of an encapsulated one).
pub(super) fn read_whole(
    file: &Path,
    limits: &ReadLimits,
    keep: fn(Tag) -> bool,
) -> Result<DefaultDicomObject, String> {
    collect(open(file, limits, keep)?, true).map(|(object, _)| object)
}

/// Runs dicom-rs's data set reader over `opened` (bounded) as a flat loop: top-level
/// primitive elements that the decoder's `keep` chooses are kept; sequences are walked (at
/// most [`MAX_DEPTH`] deep) and dropped, never built into nested objects (dicom-object builds
/// them by recursion: 3,000 nested sequences, 109 KB, overflowed the stack; and each item
/// costs a kilobyte of map). A native pixel data stops the loop unless `pixels` asks for it;
/// an encapsulated one is kept (its fragments) and ends it.
fn collect(mut opened: Opened, pixels: bool) -> Result<(DefaultDicomObject, Option<u32>), String> {
    let keep = opened.decoder.keep;
    let mut elements = Vec::new();
    let mut pixel_bytes = None;
    let mut failed = None;
    {
        let tokens = DataSetReader::new(&mut opened.decoder, DataSetReaderOptions::default());
        let mut depth = 0usize;
        let mut pending: Option<DataElementHeader> = None;
        // The encapsulated pixel data being read: offset table and fragments.
        let mut encapsulated: Option<(Vec<u32>, Vec<Vec<u8>>)> = None;
        for token in tokens {
            let token = match token {
                Ok(token) => token,
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            };
            if let Some((table, fragments)) = encapsulated.as_mut() {
                match token {
                    DataToken::OffsetTable(offsets) => *table = offsets,
                    DataToken::ItemValue(bytes) if fragments.len() < MAX_FRAGMENTS => fragments.push(bytes),
                    DataToken::ItemValue(_) => {
                        failed = Some(format!("the pixel data has more than {MAX_FRAGMENTS} fragments"));
                        break;
                    }
                    DataToken::SequenceEnd => {
                        let (table, fragments) = encapsulated.take().unwrap_or_default();
                        let sequence = PixelFragmentSequence::new(table, fragments);
                        elements.push(InMemElement::new(tags::PIXEL_DATA, VR::OB, sequence));
                        break;
                    }
                    _ => {}
                }
                continue;
            }
            match token {
                DataToken::ElementHeader(header) if depth == 0 && header.tag == tags::PIXEL_DATA => {
                    pixel_bytes = header.len.get();
                    if !pixels {
                        break;
                    }
                    pending = Some(header);
                }
                DataToken::PixelSequenceStart if depth == 0 => encapsulated = Some(Default::default()),
                DataToken::ElementHeader(header) => pending = Some(header),
                DataToken::PrimitiveValue(value) => {
                    let header = pending
                        .take()
                        .filter(|h| depth == 0 && (h.tag == tags::PIXEL_DATA || keep(h.tag)));
                    if let Some(header) = header {
                        if elements.len() == MAX_ELEMENTS {
                            failed = Some(format!("the data set has more than {MAX_ELEMENTS} elements"));
                            break;
                        }
                        let last = header.tag == tags::PIXEL_DATA;
                        elements.push(InMemElement::new(header.tag, header.vr, value));
                        if last {
                            break;
                        }
                    }
                }
                DataToken::SequenceStart { .. } | DataToken::PixelSequenceStart => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        failed = Some(format!("sequences nested more than {MAX_DEPTH} deep"));
                        break;
                    }
                }
                DataToken::SequenceEnd => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    if let Some(why) = opened.decoder.refused.take().or(failed) {
        return Err(why);
    }
    let object = InMemDicomObject::from_element_iter(elements).with_exact_meta(opened.meta);
    Ok((object, pixel_bytes))
}

fn open(file: &Path, limits: &ReadLimits, keep: fn(Tag) -> bool) -> Result<Opened, String> {
    let io = |err: std::io::Error| err.to_string();
    let handle = File::open(file).map_err(io)?;
    let size = handle.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(handle);
    let mut preamble = [0u8; PREAMBLE as usize];
    reader
        .read_exact(&mut preamble)
        .map_err(|_| "the file is shorter than a DICOM preamble".to_string())?;
    if &preamble[128..] != b"DICM" {
        return Err("no DICM mark after the 128-byte preamble".to_string());
    }
    let (meta, meta_bytes) = read_meta(&mut reader, size.saturating_sub(PREAMBLE))?;
    let uid = meta.transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let ts = TransferSyntaxRegistry
        .get(&uid)
        .ok_or_else(|| format!("transfer syntax {uid} is not one dicom-rs knows"))?;
    let left = size.saturating_sub(PREAMBLE + meta_bytes);
    let source: Box<dyn Read> = Box::new(reader);
    let (source, limit) = match ts.codec() {
        Codec::Dataset(Some(adapter)) => (
            adapter.adapt_reader(source),
            left.saturating_mul(MAX_DEFLATE_RATIO).min(limits.max_inflated_bytes()),
        ),
        Codec::Dataset(None) => {
            return Err(format!("transfer syntax {} ({uid}) cannot be read here", ts.name()));
        }
        Codec::None | Codec::EncapsulatedPixelData(..) => (source, left),
    };
    let inner = DynStatefulDecoder::new_with_override(
        source,
        ts,
        SpecificCharacterSet::default(),
        CharacterSetOverride::default(),
        0,
    )
    .map_err(|err| err.to_string())?;
    Ok(Opened {
        meta,
        decoder: Bounded {
            inner,
            limit,
            deflated: matches!(ts.codec(), Codec::Dataset(Some(_))),
            keep,
            refused: None,
        },
    })
}

/// The file meta group from `reader` (after `DICM`), read whole into memory and handed to
/// dicom-rs's reader once every length in it is within the group; with the bytes it took.
fn read_meta(reader: &mut impl Read, left: u64) -> Result<(FileMetaTable, u64), String> {
    let decoder = ExplicitVRLittleEndianDecoder::default();
    // The group length (0002,0000) first, as dicom-rs requires: its tag and a 4-byte value.
    let mut head = Vec::new();
    let (header, header_bytes) = decoder
        .decode_header(&mut Tee {
            inner: &mut *reader,
            copy: &mut head,
        })
        .map_err(|err| format!("the file meta group does not open with its group length: {err}"))?;
    if header.tag != Tag(0x0002, 0x0000) || header.len.get() != Some(4) {
        return Err(format!(
            "the file meta group opens with {} of length {:?}, not its group length (0002,0000) of 4 bytes",
            header.tag, header.len
        ));
    }
    let mut length = [0u8; 4];
    reader
        .read_exact(&mut length)
        .map_err(|_| "the file ends inside the meta group's length".to_string())?;
    head.extend_from_slice(&length);
    let group = u32::from_le_bytes(length);
    let consumed = header_bytes as u64 + 4;
    if group > MAX_META || u64::from(group) > left.saturating_sub(consumed) {
        return Err(format!(
            "the file meta group declares {group} bytes; the file has {} left (and a meta group has at most {MAX_META})",
            left.saturating_sub(consumed)
        ));
    }
    let mut body = vec![0u8; group as usize];
    reader
        .read_exact(&mut body)
        .map_err(|_| "the file ends inside its meta group".to_string())?;
    // Each element's length within what is left of the group, as dicom-rs's meta reader
    // walks it (header, value, until the group length is reached).
    let mut at = 0usize;
    while at < body.len() {
        let mut cursor = Cursor::new(&body[at..]);
        let (element, bytes) = decoder
            .decode_header(&mut cursor)
            .map_err(|err| format!("the file meta group has a damaged element header: {err}"))?;
        let room = body.len() - at - bytes;
        match element.len.get() {
            Some(len) if len as usize <= room => at += bytes + len as usize,
            len => {
                return Err(format!(
                    "meta element {} declares {} bytes; the meta group has {room} left",
                    element.tag,
                    len.map_or_else(|| "an undefined length of".to_string(), |l| l.to_string())
                ));
            }
        }
    }
    let mut whole = b"DICM".to_vec();
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&body);
    let meta = FileMetaTable::from_reader(Cursor::new(whole)).map_err(|err| err.to_string())?;
    Ok((meta, consumed + u64::from(group)))
}

/// A reader that keeps a copy of what it reads.
struct Tee<'a, R> {
    inner: &'a mut R,
    copy: &'a mut Vec<u8>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// dicom-rs's stateful decoder, refusing every value, item or skip longer than what is left
/// of the data set before the inner decoder allocates for it. `refused` says why, in the
/// user's terms (the error dicom-rs sees is its own allocation failure).
struct Bounded<D> {
    inner: D,
    /// Bytes the data set can hold, counted from its first element (inflated bytes for a
    /// deflated one).
    limit: u64,
    deflated: bool,
    /// Top-level elements whose values are wanted; any other value is skipped, not read
    /// (PixelData and SpecificCharacterSet are always read).
    keep: fn(Tag) -> bool,
    refused: Option<String>,
}

impl<D: StatefulDecode> Bounded<D> {
    fn allow(&mut self, what: impl FnOnce() -> String, len: u32) -> DecodeResult<()> {
        let at = self.inner.position();
        let left = self.limit.saturating_sub(at);
        if u64::from(len) <= left {
            return Ok(());
        }
        let holds = if self.deflated {
            format!("the deflated data set inflates to at most {left} more bytes")
        } else {
            format!("the file has {left} bytes left")
        };
        self.refused = Some(format!(
            "{} declares {len} bytes at data set byte {at}; {holds}",
            what()
        ));
        Err(DecodeError::AllocateValueData { len })
    }

    /// Checks a value's length, and skips the value (`true`) when it is not wanted: nothing
    /// is allocated for it (4 MB of backslashes in a UC value became 100 MB of strings).
    fn skipped(&mut self, header: &DataElementHeader) -> DecodeResult<bool> {
        self.allow_header(header)?;
        let wanted =
            (self.keep)(header.tag) || header.tag == tags::PIXEL_DATA || header.tag == tags::SPECIFIC_CHARACTER_SET;
        match header.len.get() {
            Some(len) if !wanted => self.inner.skip_bytes(len).map(|()| true),
            _ => Ok(false),
        }
    }

    fn allow_header(&mut self, header: &DataElementHeader) -> DecodeResult<()> {
        match header.len.get() {
            Some(len) => self.allow(|| format!("element {} ({})", header.tag, header.vr), len),
            None => Ok(()),
        }
    }
}

impl<D: StatefulDecode> StatefulDecode for Bounded<D> {
    type Reader = D::Reader;

    // A defined length is checked as soon as its header is decoded: dicom-rs's data set
    // reader reserves an item's bytes itself before it asks the decoder to read them.
    fn decode_header(&mut self) -> DecodeResult<DataElementHeader> {
        let header = self.inner.decode_header()?;
        self.allow_header(&header)?;
        Ok(header)
    }

    fn decode_item_header(&mut self) -> DecodeResult<SequenceItemHeader> {
        let header = self.inner.decode_item_header()?;
        if let SequenceItemHeader::Item { len } = header
            && let Some(len) = len.get()
        {
            self.allow(|| "an item (FFFE,E000)".to_string(), len)?;
        }
        Ok(header)
    }

    fn read_value(&mut self, header: &DataElementHeader) -> DecodeResult<PrimitiveValue> {
        if self.skipped(header)? {
            return Ok(PrimitiveValue::Empty);
        }
        self.inner.read_value(header)
    }

    fn read_value_preserved(&mut self, header: &DataElementHeader) -> DecodeResult<PrimitiveValue> {
        if self.skipped(header)? {
            return Ok(PrimitiveValue::Empty);
        }
        self.inner.read_value_preserved(header)
    }

    fn read_value_bytes(&mut self, header: &DataElementHeader) -> DecodeResult<PrimitiveValue> {
        if self.skipped(header)? {
            return Ok(PrimitiveValue::Empty);
        }
        self.inner.read_value_bytes(header)
    }

    fn read_to_vec(&mut self, length: u32, vec: &mut Vec<u8>) -> DecodeResult<()> {
        self.allow(|| "an item (FFFE,E000)".to_string(), length)?;
        self.inner.read_to_vec(length, vec)
    }

    fn read_u32_to_vec(&mut self, length: u32, vec: &mut Vec<u32>) -> DecodeResult<()> {
        self.allow(|| "the basic offset table".to_string(), length)?;
        self.inner.read_u32_to_vec(length, vec)
    }

    fn read_to<W>(&mut self, length: u32, out: W) -> DecodeResult<()>
    where
        Self: Sized,
        W: std::io::Write,
    {
        self.allow(|| "a value".to_string(), length)?;
        self.inner.read_to(length, out)
    }

    fn skip_bytes(&mut self, length: u32) -> DecodeResult<()> {
        self.allow(|| "a skipped value".to_string(), length)?;
        self.inner.skip_bytes(length)
    }

    fn seek(&mut self, position: u64) -> DecodeResult<()>
    where
        Self::Reader: std::io::Seek,
    {
        self.inner.seek(position)
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }
}
