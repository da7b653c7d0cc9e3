//! Builds a unified kernel image (UKI): systemd's EFI stub
//! (`linuxx64.efi.stub` from Debian's `systemd-boot-efi`) with the kernel,
//! the initramfs, the command line and the OS identification appended as
//! PE sections. bookworm ships no `ukify`, so this does what ukify's
//! `pe_add_sections` does:
//!
//! - the stub must be an unsigned PE32+ image for x86-64 that has none of
//!   the new sections yet;
//! - the sections `.osrel .uname .cmdline .initrd .linux` are appended in
//!   that order (`.linux` last, as the stub expects): each one's
//!   `VirtualAddress` is the end of the previous last section rounded up to
//!   `SectionAlignment`, its raw data starts where the previous section's
//!   raw data ends, `SizeOfRawData` is its length rounded up to
//!   `FileAlignment` and `VirtualSize` its exact length;
//! - whatever follows the stub's last section (Debian's stub ends in a COFF
//!   symbol table) is dropped and `PointerToSymbolTable`/`NumberOfSymbols`
//!   are zeroed, as the PE format wants for images: UEFI firmware computes
//!   the Authenticode hash over the headers and the sections' raw data in
//!   file order, so bytes between two sections are hashed by a signing tool
//!   (which hashes the file linearly) but not by the firmware, and Secure
//!   Boot would refuse the signed UKI ("Access Denied");
//! - characteristics are `MEM_READ | CNT_INITIALIZED_DATA` (`0x40000040`),
//!   except `.linux`: `MEM_READ | CNT_CODE` (`0x40000020`), because old
//!   kernels booted through the EFI handover protocol run in place;
//! - the new headers go right after the existing section table, which needs
//!   room for five more 40-byte headers before `SizeOfHeaders` and the first
//!   section's raw data (the stub's linker leaves it, Debian's stub has
//!   room for eight more);
//! - `NumberOfSections`, `SizeOfInitializedData` (grown by each section's
//!   length, as ukify does) and `SizeOfImage` are updated and `CheckSum` is
//!   set to 0 (EFI firmware does not check it; a signing tool rewrites it).
//!
//! The output depends on the inputs only. The stub is parsed and validated
//! with the `object` crate (it checks the DOS and NT signatures, the
//! optional header magic and the bounds of every table, which hand-parsing
//! would have to repeat); the few header fields that change are then patched
//! at the offsets `object` located, since `object` writes new PE files but
//! does not edit existing ones.

use object::LittleEndian as LE;
use object::pe::{self, ImageDosHeader, ImageNtHeaders64};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader};

/// Bytes of one section header.
const SECTION_HEADER_SIZE: usize = 40;

/// Characteristics of the added data sections: `MEM_READ | CNT_INITIALIZED_DATA`.
pub const DATA_CHARACTERISTICS: u32 = pe::IMAGE_SCN_MEM_READ | pe::IMAGE_SCN_CNT_INITIALIZED_DATA;

/// Characteristics of `.linux`: `MEM_READ | CNT_CODE`, as ukify sets them.
pub const LINUX_CHARACTERISTICS: u32 = pe::IMAGE_SCN_MEM_READ | pe::IMAGE_SCN_CNT_CODE;

/// The names of the added sections, in the order they are appended.
pub const SECTION_NAMES: [&str; 5] = [".osrel", ".uname", ".cmdline", ".initrd", ".linux"];

/// Offsets inside the optional header (PE32+) of the fields that change.
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_CHECKSUM: usize = 64;
/// Offset of `NumberOfSections` in the NT headers (after the 4-byte signature).
const NT_NUMBER_OF_SECTIONS: usize = 6;
/// Offset of the optional header in the NT headers.
const NT_OPTIONAL_HEADER: usize = 24;
/// Offsets of `PointerToSymbolTable` and `NumberOfSymbols` in the NT headers.
const NT_SYMBOL_TABLE: usize = 12;
const NT_NUMBER_OF_SYMBOLS: usize = 16;

/// The contents of the sections a UKI adds to the stub.
#[derive(Debug, Clone, Copy)]
pub struct UkiSections<'a> {
    /// `.osrel`: the `os-release` file of the booted system.
    pub osrel: &'a [u8],
    /// `.uname`: the kernel release (`uname -r`), e.g. `6.1.0-50-amd64`.
    pub uname: &'a [u8],
    /// `.cmdline`: the kernel command line.
    pub cmdline: &'a [u8],
    /// `.initrd`: the initramfs.
    pub initrd: &'a [u8],
    /// `.linux`: the kernel image (`vmlinuz`, itself an EFI stub kernel).
    pub linux: &'a [u8],
}

/// Why a UKI could not be built from the stub.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub is not a well-formed PE32+ image.
    #[error("the EFI stub is not a PE32+ image: {0}")]
    NotPe32Plus(String),
    /// The stub is for another machine.
    #[error(
        "the EFI stub is for PE machine {machine:#06x}, not x86-64 ({:#06x})",
        pe::IMAGE_FILE_MACHINE_AMD64
    )]
    WrongMachine {
        /// The stub's `Machine` field.
        machine: u16,
    },
    /// The stub carries an Authenticode signature, which appending sections breaks.
    #[error("the EFI stub is signed; appending sections would break the signature")]
    Signed,
    /// The stub already has a section a UKI adds.
    #[error("the EFI stub already has a {name} section")]
    SectionExists {
        /// The section's name.
        name: &'static str,
    },
    /// One of the sections to add is empty.
    #[error("the UKI section {name} is empty")]
    EmptySection {
        /// The section's name.
        name: &'static str,
    },
    /// The section table has no room for the new headers.
    #[error(
        "the EFI stub's headers have no room for {} more section headers: they would end at byte {needed}, the headers end at {available}",
        SECTION_NAMES.len()
    )]
    NoHeaderRoom {
        /// Where the last new header would end.
        needed: usize,
        /// The end of the header area (`SizeOfHeaders` or the first section's data, whichever is lower).
        available: usize,
    },
    /// The bytes where the new headers go are not zero.
    #[error("the EFI stub has data at bytes {start}..{end}, where the new section headers go")]
    HeaderSpaceInUse {
        /// First byte of the new headers.
        start: usize,
        /// End of the new headers.
        end: usize,
    },
    /// The result would not fit PE's 32-bit sizes and addresses.
    #[error("the UKI section {name} ({bytes} bytes) does not fit a 32-bit PE image")]
    TooLarge {
        /// The section's name.
        name: &'static str,
        /// Its length.
        bytes: usize,
    },
}

/// What the existing stub tells about where new sections go.
struct StubLayout {
    /// Offset of the NT headers (`e_lfanew`).
    nt_offset: usize,
    /// Offset of the first new section header.
    table_end: usize,
    /// Existing sections.
    sections: u16,
    /// `SectionAlignment`.
    section_alignment: u32,
    /// `FileAlignment`.
    file_alignment: u32,
    /// End of the last section in memory (VA + VirtualSize), unaligned.
    virtual_end: u32,
    /// `SizeOfInitializedData`.
    initialized_data: u32,
    /// End of the last section's raw data in the file.
    raw_end: usize,
}

/// The stub with the sections of `sections` appended (see the module
/// documentation); `stub` itself is not changed.
pub fn build_uki(stub: &[u8], sections: &UkiSections) -> Result<Vec<u8>, UkiError> {
    let layout = parse_stub(stub)?;
    let contents = [
        sections.osrel,
        sections.uname,
        sections.cmdline,
        sections.initrd,
        sections.linux,
    ];
    if let Some((name, _)) = SECTION_NAMES
        .iter()
        .zip(contents)
        .find(|(_, bytes)| bytes.is_empty())
    {
        return Err(UkiError::EmptySection { name });
    }
    let mut out = stub[..layout.raw_end].to_vec();
    put_u32(&mut out, layout.nt_offset + NT_SYMBOL_TABLE, 0);
    put_u32(&mut out, layout.nt_offset + NT_NUMBER_OF_SYMBOLS, 0);
    let mut virtual_end = layout.virtual_end;
    let mut initialized_data = layout.initialized_data;
    for (index, (name, bytes)) in SECTION_NAMES.iter().zip(contents).enumerate() {
        let too_large = || UkiError::TooLarge {
            name,
            bytes: bytes.len(),
        };
        let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        let raw_size = round_up(len, layout.file_alignment).ok_or_else(too_large)?;
        let virtual_address =
            round_up(virtual_end, layout.section_alignment).ok_or_else(too_large)?;
        let raw_offset = u32::try_from(out.len())
            .ok()
            .and_then(|end| round_up(end, layout.file_alignment))
            .filter(|offset| offset.checked_add(raw_size).is_some())
            .ok_or_else(too_large)?;
        virtual_end = virtual_address.checked_add(len).ok_or_else(too_large)?;
        initialized_data = initialized_data.wrapping_add(len);
        let header = section_header(name, len, virtual_address, raw_size, raw_offset);
        let at = layout.table_end + index * SECTION_HEADER_SIZE;
        out[at..at + SECTION_HEADER_SIZE].copy_from_slice(&header);
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(bytes);
        out.resize((raw_offset + raw_size) as usize, 0);
    }
    let size_of_image =
        round_up(virtual_end, layout.section_alignment).ok_or(UkiError::TooLarge {
            name: ".linux",
            bytes: sections.linux.len(),
        })?;
    let added = u16::try_from(SECTION_NAMES.len()).expect("five sections");
    let optional = layout.nt_offset + NT_OPTIONAL_HEADER;
    put_u16(
        &mut out,
        layout.nt_offset + NT_NUMBER_OF_SECTIONS,
        layout.sections + added,
    );
    put_u32(
        &mut out,
        optional + OPT_SIZE_OF_INITIALIZED_DATA,
        initialized_data,
    );
    put_u32(&mut out, optional + OPT_SIZE_OF_IMAGE, size_of_image);
    put_u32(&mut out, optional + OPT_CHECKSUM, 0);
    Ok(out)
}

/// Parses and checks the stub and finds where the new sections go.
fn parse_stub(stub: &[u8]) -> Result<StubLayout, UkiError> {
    let invalid = |error: object::Error| UkiError::NotPe32Plus(error.to_string());
    let dos = ImageDosHeader::parse(stub).map_err(invalid)?;
    let nt_offset = dos.nt_headers_offset();
    let mut offset = u64::from(nt_offset);
    let (nt, directories) = ImageNtHeaders64::parse(stub, &mut offset).map_err(invalid)?;
    let machine = nt.file_header().machine.get(LE);
    if machine != pe::IMAGE_FILE_MACHINE_AMD64 {
        return Err(UkiError::WrongMachine { machine });
    }
    if directories
        .get(pe::IMAGE_DIRECTORY_ENTRY_SECURITY)
        .is_some_and(|security| security.virtual_address.get(LE) != 0)
    {
        return Err(UkiError::Signed);
    }
    let table = nt.sections(stub, offset).map_err(invalid)?;
    for header in table.iter() {
        let name = header.name;
        if let Some(existing) = SECTION_NAMES.iter().find(|n| name_bytes(n) == name) {
            return Err(UkiError::SectionExists { name: existing });
        }
    }
    let optional = nt.optional_header();
    let (section_alignment, file_alignment) =
        (optional.section_alignment(), optional.file_alignment());
    if !section_alignment.is_power_of_two() || !file_alignment.is_power_of_two() {
        return Err(UkiError::NotPe32Plus(format!(
            "alignments are not powers of two: SectionAlignment {section_alignment:#x}, FileAlignment {file_alignment:#x}"
        )));
    }
    let table_end = offset as usize + table.len() * SECTION_HEADER_SIZE;
    check_header_room(stub, &table, table_end, optional.size_of_headers())?;
    let virtual_end = table
        .iter()
        .map(|h| {
            h.virtual_address
                .get(LE)
                .saturating_add(h.virtual_size.get(LE))
        })
        .max()
        .unwrap_or(0);
    let raw_end = table
        .iter()
        .map(|h| {
            h.pointer_to_raw_data
                .get(LE)
                .saturating_add(h.size_of_raw_data.get(LE)) as usize
        })
        .max()
        .unwrap_or(0)
        .max(table_end);
    if raw_end > stub.len() {
        return Err(UkiError::NotPe32Plus(format!(
            "the sections' raw data ends at byte {raw_end}, after the end of the file ({})",
            stub.len()
        )));
    }
    Ok(StubLayout {
        nt_offset: nt_offset as usize,
        table_end,
        sections: nt.file_header().number_of_sections.get(LE),
        section_alignment,
        file_alignment,
        virtual_end,
        initialized_data: optional.size_of_initialized_data(),
        raw_end,
    })
}

/// Checks that five more section headers fit after the table, before
/// `SizeOfHeaders` and the first section's raw data, over zero bytes.
fn check_header_room(
    stub: &[u8],
    table: &object::read::coff::SectionTable,
    table_end: usize,
    size_of_headers: u32,
) -> Result<(), UkiError> {
    let first_raw = table
        .iter()
        .map(|h| h.pointer_to_raw_data.get(LE))
        .filter(|&offset| offset != 0)
        .min()
        .unwrap_or(u32::MAX);
    let available = size_of_headers.min(first_raw) as usize;
    let needed = table_end + SECTION_NAMES.len() * SECTION_HEADER_SIZE;
    if needed > available.min(stub.len()) {
        return Err(UkiError::NoHeaderRoom {
            needed,
            available: available.min(stub.len()),
        });
    }
    if stub[table_end..needed].iter().any(|&b| b != 0) {
        return Err(UkiError::HeaderSpaceInUse {
            start: table_end,
            end: needed,
        });
    }
    Ok(())
}

/// One 40-byte section header (no relocations, no line numbers).
fn section_header(
    name: &str,
    virtual_size: u32,
    virtual_address: u32,
    raw_size: u32,
    raw_offset: u32,
) -> [u8; SECTION_HEADER_SIZE] {
    let characteristics = if name == ".linux" {
        LINUX_CHARACTERISTICS
    } else {
        DATA_CHARACTERISTICS
    };
    let mut header = [0u8; SECTION_HEADER_SIZE];
    header[..8].copy_from_slice(&name_bytes(name));
    for (at, value) in [
        (8, virtual_size),
        (12, virtual_address),
        (16, raw_size),
        (20, raw_offset),
        (36, characteristics),
    ] {
        header[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
    header
}

/// A section name as its 8-byte, zero-padded header field.
fn name_bytes(name: &str) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    bytes
}

/// `value` rounded up to a multiple of `alignment` (a power of two), if it fits.
fn round_up(value: u32, alignment: u32) -> Option<u32> {
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::read::pe::PeFile64;
    use object::{Object, ObjectSection};

    const E_LFANEW: usize = 0x40;
    const OPTIONAL: usize = E_LFANEW + NT_OPTIONAL_HEADER;
    const TABLE: usize = OPTIONAL + 240;
    const SECTION_ALIGNMENT: u32 = 0x1000;
    const FILE_ALIGNMENT: u32 = 0x200;

    /// A minimal PE32+ EFI application for `machine` with a `.text` and a
    /// `.data` section, `SizeOfHeaders` of `size_of_headers`, and `tail`
    /// bytes of unaligned trailing data (as an unstripped symbol table).
    fn stub_for(machine: u16, size_of_headers: u32, tail: usize) -> Vec<u8> {
        let text = [0xC3u8; 0x30];
        let data = [0x5Au8; 0x11];
        let headers = size_of_headers as usize;
        let mut pe = vec![0u8; headers];
        pe[0..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3C, E_LFANEW as u32);
        pe[E_LFANEW..E_LFANEW + 4].copy_from_slice(b"PE\0\0");
        put_u16(&mut pe, E_LFANEW + 4, machine);
        put_u16(&mut pe, E_LFANEW + NT_NUMBER_OF_SECTIONS, 2);
        put_u16(&mut pe, E_LFANEW + 20, 240);
        put_u16(&mut pe, E_LFANEW + 22, 0x0206);
        put_u16(&mut pe, OPTIONAL, 0x20B);
        for (at, value) in [
            (4, 0x200),
            (OPT_SIZE_OF_INITIALIZED_DATA, 0x200),
            (16, 0x1000),
            (20, 0x1000),
            (32, SECTION_ALIGNMENT),
            (36, FILE_ALIGNMENT),
            (OPT_SIZE_OF_IMAGE, 0x3000),
            (60, size_of_headers),
            (OPT_CHECKSUM, 0x1234),
            (108, 16),
        ] {
            put_u32(&mut pe, OPTIONAL + at, value);
        }
        put_u16(&mut pe, OPTIONAL + 68, 10);
        let text_header = section_header(".text", 0x30, 0x1000, 0x200, size_of_headers);
        let mut data_header = section_header(".data", 0x11, 0x2000, 0x200, size_of_headers + 0x200);
        data_header[36..40].copy_from_slice(&0xC000_0040u32.to_le_bytes());
        pe[TABLE..TABLE + 40].copy_from_slice(&text_header);
        pe[TABLE + 40..TABLE + 80].copy_from_slice(&data_header);
        pe.extend_from_slice(&text);
        pe.resize(headers + 0x200, 0);
        pe.extend_from_slice(&data);
        pe.resize(headers + 0x400, 0);
        if tail > 0 {
            put_u32(&mut pe, E_LFANEW + NT_SYMBOL_TABLE, headers as u32 + 0x400);
            put_u32(&mut pe, E_LFANEW + NT_NUMBER_OF_SYMBOLS, 1);
        }
        pe.extend((0..tail).map(|i| i as u8 | 1));
        pe
    }

    fn stub() -> Vec<u8> {
        stub_for(pe::IMAGE_FILE_MACHINE_AMD64, 0x400, 0x33)
    }

    fn sections<'a>(linux: &'a [u8], initrd: &'a [u8]) -> UkiSections<'a> {
        UkiSections {
            osrel: b"ID=debian\nVERSION_ID=12\n",
            uname: b"6.1.0-50-amd64",
            cmdline: b"console=ttyS0 panic=-1",
            initrd,
            linux,
        }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// Checks `uki` made from `stub` and `input`: the stub's sections are
    /// unchanged, the new ones follow in order, aligned, with their contents
    /// and flags, and the header fields agree.
    fn check_uki(stub: &[u8], uki: &[u8], input: &UkiSections) {
        let original = PeFile64::parse(stub).unwrap();
        let file = PeFile64::parse(uki).unwrap();
        let old: Vec<_> = original.sections().collect();
        let new: Vec<_> = file.sections().collect();
        assert_eq!(new.len(), old.len() + 5);
        for (before, after) in old.iter().zip(&new) {
            assert_eq!(before.name().unwrap(), after.name().unwrap());
            assert_eq!(before.address(), after.address());
            assert_eq!(before.data().unwrap(), after.data().unwrap());
        }
        let expected = [
            input.osrel,
            input.uname,
            input.cmdline,
            input.initrd,
            input.linux,
        ];
        let nt = file.nt_headers();
        let optional = nt.optional_header();
        let (sa, fa) = (
            u64::from(optional.section_alignment()),
            u64::from(optional.file_alignment()),
        );
        let mut previous_end = old.iter().map(|s| s.address() + s.size()).max().unwrap();
        let mut file_end = old
            .iter()
            .map(|s| {
                let header = s.pe_section();
                u64::from(header.pointer_to_raw_data.get(LE) + header.size_of_raw_data.get(LE))
            })
            .max()
            .unwrap();
        for ((section, name), contents) in new[old.len()..].iter().zip(SECTION_NAMES).zip(expected)
        {
            assert_eq!(section.name().unwrap(), name);
            let header = section.pe_section();
            let offset = u64::from(header.pointer_to_raw_data.get(LE));
            let raw_size = u64::from(header.size_of_raw_data.get(LE));
            assert_eq!(
                section.address(),
                previous_end.div_ceil(sa) * sa,
                "{name} VA"
            );
            assert_eq!(offset, file_end, "{name} raw offset: no gap");
            assert_eq!(raw_size % fa, 0, "{name} raw size");
            assert_eq!(section.size(), contents.len() as u64, "{name} virtual size");
            assert_eq!(
                &section.data().unwrap()[..contents.len()],
                contents,
                "{name}"
            );
            let flags = match section.flags() {
                object::SectionFlags::Coff { characteristics } => characteristics,
                other => panic!("{other:?}"),
            };
            let wanted = if name == ".linux" {
                0x4000_0020
            } else {
                0x4000_0040
            };
            assert_eq!(flags, wanted, "{name} characteristics");
            previous_end = section.address() + section.size();
            file_end = offset + raw_size;
        }
        assert_eq!(uki.len() as u64, file_end);
        assert_eq!(
            u64::from(optional.size_of_image()),
            previous_end.div_ceil(sa) * sa
        );
        assert_eq!(optional.check_sum(), 0);
        let grown: usize = expected.iter().map(|s| s.len()).sum();
        let before = PeFile64::parse(stub).unwrap();
        assert_eq!(
            optional.size_of_initialized_data() as usize,
            before
                .nt_headers()
                .optional_header()
                .size_of_initialized_data() as usize
                + grown
        );
    }

    #[test]
    fn sections_are_appended_aligned_in_order_with_their_contents() {
        let stub = stub();
        let linux: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let initrd = vec![0x07u8; 0x1001];
        let input = sections(&linux, &initrd);
        let uki = build_uki(&stub, &input).unwrap();
        check_uki(&stub, &uki, &input);
        // The stub up to its last section is kept; its symbol table is not.
        let kept = 0x800;
        assert_eq!(&uki[..kept], {
            let mut head = stub[..kept].to_vec();
            for at in [NT_SYMBOL_TABLE, NT_NUMBER_OF_SYMBOLS] {
                put_u32(&mut head, E_LFANEW + at, 0);
            }
            head[TABLE + 80..TABLE + 80 + 200].copy_from_slice(&uki[TABLE + 80..TABLE + 280]);
            head[E_LFANEW + NT_NUMBER_OF_SECTIONS] = 7;
            for at in [
                OPT_SIZE_OF_INITIALIZED_DATA,
                OPT_SIZE_OF_IMAGE,
                OPT_CHECKSUM,
            ] {
                head[OPTIONAL + at..OPTIONAL + at + 4]
                    .copy_from_slice(&uki[OPTIONAL + at..OPTIONAL + at + 4]);
            }
            head
        });
        // Concrete numbers for the first section: right after .data.
        assert_eq!(u32_at(&uki, TABLE + 80 + 12), 0x3000);
        assert_eq!(u32_at(&uki, TABLE + 80 + 20), 0x800);
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let stub = stub();
        let input = sections(b"kernel", b"initrd");
        assert_eq!(
            build_uki(&stub, &input).unwrap(),
            build_uki(&stub, &input).unwrap()
        );
    }

    #[test]
    fn bad_stubs_are_refused() {
        let input = sections(b"kernel", b"initrd");
        let error = build_uki(b"not a PE file", &input).unwrap_err();
        assert!(matches!(error, UkiError::NotPe32Plus(_)), "{error}");

        let mut pe32 = stub();
        put_u16(&mut pe32, OPTIONAL, 0x10B);
        let error = build_uki(&pe32, &input).unwrap_err();
        assert!(matches!(error, UkiError::NotPe32Plus(_)), "{error}");

        let arm = stub_for(pe::IMAGE_FILE_MACHINE_ARM64, 0x400, 0);
        let error = build_uki(&arm, &input).unwrap_err();
        assert!(
            matches!(error, UkiError::WrongMachine { machine: 0xAA64 }),
            "{error}"
        );

        let cramped = stub_for(pe::IMAGE_FILE_MACHINE_AMD64, 0x200, 0);
        let error = build_uki(&cramped, &input).unwrap_err();
        assert!(
            matches!(
                error,
                UkiError::NoHeaderRoom {
                    needed: 0x260,
                    available: 0x200
                }
            ),
            "{error}"
        );

        let mut cluttered = stub();
        cluttered[TABLE + 100] = 1;
        let error = build_uki(&cluttered, &input).unwrap_err();
        assert!(
            matches!(error, UkiError::HeaderSpaceInUse { .. }),
            "{error}"
        );

        let mut signed = stub();
        put_u32(&mut signed, OPTIONAL + 112 + 8 * 4, 0x1400);
        put_u32(&mut signed, OPTIONAL + 112 + 8 * 4 + 4, 0x10);
        let error = build_uki(&signed, &input).unwrap_err();
        assert!(matches!(error, UkiError::Signed), "{error}");

        let uki = build_uki(&stub(), &input).unwrap();
        let error = build_uki(&uki, &input).unwrap_err();
        assert!(
            matches!(error, UkiError::SectionExists { name: ".osrel" }),
            "{error}"
        );
        assert!(error.to_string().contains(".osrel"), "{error}");
    }

    #[test]
    fn empty_sections_are_refused() {
        let error = build_uki(&stub(), &sections(b"kernel", b"")).unwrap_err();
        assert!(
            matches!(error, UkiError::EmptySection { name: ".initrd" }),
            "{error}"
        );
    }

    /// binutils must read the result too, as `objcopy`-made UKIs are.
    #[test]
    fn objdump_lists_the_sections() {
        let Some(objdump) = find_tool("objdump") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "objdump is missing: run scripts/host-setup (Debian package binutils)"
            );
            eprintln!("SKIPPED: objdump is not installed (Debian package binutils)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uki.efi");
        std::fs::write(
            &path,
            build_uki(&stub(), &sections(b"kernel", b"initrd")).unwrap(),
        )
        .unwrap();
        let output = std::process::Command::new(objdump)
            .arg("-h")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("pei-x86-64"), "{text}");
        let listed: Vec<&str> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                words.next()?.parse::<u32>().ok()?;
                words.next()
            })
            .collect();
        assert_eq!(
            listed,
            [
                ".text", ".data", ".osrel", ".uname", ".cmdline", ".initrd", ".linux"
            ],
            "{text}"
        );
    }

    /// The real Debian stub, when `applbuild.lock` pins `systemd-boot-efi`
    /// and its `.deb` is in the cache (fails under CI=true otherwise).
    #[test]
    fn debian_stub_takes_the_sections() {
        let Some(deb) =
            applbuild_testdata::or_skip(applbuild_testdata::locked_deb("systemd-boot-efi"))
        else {
            return;
        };
        let stub = file_from_deb(&deb.path, "usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let linux = vec![0x4Du8; 3 << 20];
        let initrd = vec![0x07u8; 1 << 20];
        let input = sections(&linux, &initrd);
        let uki = build_uki(&stub, &input).unwrap();
        check_uki(&stub, &uki, &input);
    }

    /// The contents of `wanted` in the `.deb` at `deb`.
    pub(crate) fn file_from_deb(deb: &std::path::Path, wanted: &str) -> Vec<u8> {
        use applbuild_rootfs::deb_archive::{DebArchive, DebError, EntryKind};
        let archive = DebArchive::open(deb).unwrap();
        let mut found = None;
        archive
            .for_each_data_entry(|entry| {
                if let (true, EntryKind::File(bytes)) = (entry.path == wanted, entry.kind) {
                    found = Some(bytes.to_vec());
                }
                Ok::<(), DebError>(())
            })
            .unwrap();
        found.unwrap_or_else(|| panic!("{} has no {wanted}", deb.display()))
    }

    /// `name` on PATH, if installed.
    fn find_tool(name: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }
}
