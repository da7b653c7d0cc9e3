//! Reads Debian binary packages (`.deb`): the `ar` container, the `control`
//! file and the entries of `data.tar.*`, without touching the host
//! filesystem's owners or modes.
//!
//! Unpacking is the slow step of a build (xz decompression), so
//! [`for_each_data_entry_cached`] keeps each package's `data.tar` once more,
//! re-compressed with zstd level 1, under `<cache_root>/unpacked/<sha256>.tar.zst`;
//! later builds read that instead, which is several times faster.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use applbuild_fs::AtomicFile;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Files and pipes read through buffers this large: big enough that the
/// decompressors see few short reads.
const READ_BUFFER: usize = 256 * 1024;

/// Errors while reading a `.deb` or its unpacked-cache copy; each names the
/// file and, where known, the member and entry.
#[derive(Debug, Error)]
pub enum DebError {
    /// The `.deb` (or cache file) could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The `ar` container is malformed.
    #[error("{path}: not a valid .deb ar archive: {source}")]
    Ar {
        /// The `.deb`.
        path: PathBuf,
        /// What the `ar` reader reported.
        source: io::Error,
    },
    /// A member every `.deb` has is absent.
    #[error("{path}: no {member} member")]
    MissingMember {
        /// The `.deb`.
        path: PathBuf,
        /// The member (`debian-binary`, `control.tar.*` or `data.tar.*`).
        member: &'static str,
    },
    /// `debian-binary` announces a format other than 2.x.
    #[error("{path}: unsupported .deb format version {version:?}")]
    FormatVersion {
        /// The `.deb`.
        path: PathBuf,
        /// The text of `debian-binary`.
        version: String,
    },
    /// A tar member uses a compression this reader does not know.
    #[error("{path}: member {member}: unsupported compression")]
    UnsupportedCompression {
        /// The `.deb`.
        path: PathBuf,
        /// The member name.
        member: String,
    },
    /// The multithreaded xz decoder could not be set up.
    #[error("{path}: member {member}: cannot start xz decoder: {source}")]
    XzSetup {
        /// The `.deb`.
        path: PathBuf,
        /// The member name.
        member: String,
        /// What liblzma reported.
        source: liblzma::stream::Error,
    },
    /// Decompressing or reading the tar stream failed.
    #[error("{path}: member {member}: {source}")]
    Tar {
        /// The `.deb` (or cache file).
        path: PathBuf,
        /// The member name.
        member: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading one tar entry failed.
    #[error("{path}: member {member}: entry {entry}: {source}")]
    Entry {
        /// The `.deb` (or cache file).
        path: PathBuf,
        /// The member name.
        member: String,
        /// The entry's path as stored.
        entry: String,
        /// The underlying error.
        source: io::Error,
    },
    /// An entry's path or link target is unusable (not UTF-8, or climbs out
    /// of the root with `..`).
    #[error("{path}: member {member}: entry {entry:?}: {reason}")]
    BadEntry {
        /// The `.deb` (or cache file).
        path: PathBuf,
        /// The member name.
        member: String,
        /// The entry's path, lossily decoded.
        entry: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The package has no `control` file in `control.tar.*`.
    #[error("{path}: member {member}: no ./control file")]
    NoControlFile {
        /// The `.deb`.
        path: PathBuf,
        /// The member name.
        member: String,
    },
    /// The SHA256 given as a cache key is not 64 hex digits.
    #[error("{path}: cache key {sha256:?} is not a SHA256 in hex")]
    BadCacheKey {
        /// The `.deb`.
        path: PathBuf,
        /// The rejected key.
        sha256: String,
    },
    /// The cached unpacked copy is unreadable; it has been deleted so the
    /// next build recreates it from the `.deb`.
    #[error("unpacked cache {path} is corrupt and was removed: {source}")]
    CorruptCache {
        /// The cache file.
        path: PathBuf,
        /// What failed while reading it.
        source: Box<DebError>,
    },
}

/// What a tar entry is, with what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its contents (shared: trees and archives clone it
    /// without copying).
    File(Arc<[u8]>),
    /// A directory.
    Dir,
    /// A symbolic link and its target, exactly as stored.
    Symlink(String),
    /// A hard link to another entry, named by its normalized path.
    Hardlink(String),
}

/// One entry of a package's `data.tar`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    /// Relative path without a leading `./` or `/` (e.g. `usr/bin/ls`).
    pub path: String,
    /// Kind and payload.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Owner as recorded in the archive.
    pub uid: u32,
    /// Group as recorded in the archive.
    pub gid: u32,
}

/// Whether [`for_each_data_entry_cached`] used or filled the unpacked cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Entries came from the cached copy.
    Hit,
    /// Entries came from the `.deb` and a cached copy was stored.
    Stored,
    /// Entries came from the `.deb`; storing the copy failed (the build does
    /// not depend on it, so this is reported, not raised).
    NotStored(String),
    /// The cached copy failed its check (the reason given) and was
    /// discarded; entries came from the `.deb` and a new copy was stored.
    Rebuilt(String),
}

/// One member of the `ar` container.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    index: usize,
}

/// An opened `.deb`: its path and the members found in its `ar` container.
#[derive(Debug, Clone)]
pub struct DebArchive {
    path: PathBuf,
    control: Member,
    data: Member,
}

impl DebArchive {
    /// Opens a `.deb` and checks its container: `debian-binary` says 2.x and
    /// there is one `control.tar*` and one `data.tar*` member.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DebError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| DebError::Io {
            path: path.clone(),
            source,
        })?;
        let mut archive = ar::Archive::new(BufReader::with_capacity(READ_BUFFER, file));
        let ar_error = |source| DebError::Ar {
            path: path.clone(),
            source,
        };
        let count = archive.count_entries().map_err(ar_error)?;
        let mut version = None;
        let mut control = None;
        let mut data = None;
        for index in 0..count {
            let mut entry = archive.jump_to_entry(index).map_err(ar_error)?;
            let name = member_name(entry.header().identifier());
            if name == "debian-binary" {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(64)
                    .read_to_string(&mut text)
                    .map_err(ar_error)?;
                version = Some(text);
            } else if name.starts_with("control.tar") && control.is_none() {
                control = Some(Member { name, index });
            } else if name.starts_with("data.tar") && data.is_none() {
                data = Some(Member { name, index });
            }
            // The ar reader drains unread member data on drop; seeking to the
            // end first makes skipping the large data member free.
            entry.seek(SeekFrom::End(0)).map_err(ar_error)?;
        }
        let version = version.ok_or_else(|| DebError::MissingMember {
            path: path.clone(),
            member: "debian-binary",
        })?;
        if !version.starts_with("2.") {
            return Err(DebError::FormatVersion {
                path,
                version: version.trim_end().to_string(),
            });
        }
        let control = control.ok_or_else(|| DebError::MissingMember {
            path: path.clone(),
            member: "control.tar.*",
        })?;
        let data = data.ok_or_else(|| DebError::MissingMember {
            path: path.clone(),
            member: "data.tar.*",
        })?;
        Ok(Self {
            path,
            control,
            data,
        })
    }

    /// The text of `./control` from `control.tar.*`.
    pub fn control(&self) -> Result<String, DebError> {
        let member = &self.control;
        self.with_member(member, |reader| {
            let mut archive = tar::Archive::new(reader);
            let tar_error = |source| DebError::Tar {
                path: self.path.clone(),
                member: member.name.clone(),
                source,
            };
            for entry in archive.entries().map_err(tar_error)? {
                let mut entry = entry.map_err(tar_error)?;
                let raw = entry.path_bytes().into_owned();
                let entry_name = String::from_utf8_lossy(&raw).into_owned();
                if normalize(&raw).as_deref() == Some("control") {
                    let mut text = String::new();
                    entry
                        .read_to_string(&mut text)
                        .map_err(|source| DebError::Entry {
                            path: self.path.clone(),
                            member: member.name.clone(),
                            entry: entry_name,
                            source,
                        })?;
                    return Ok(text);
                }
            }
            Err(DebError::NoControlFile {
                path: self.path.clone(),
                member: member.name.clone(),
            })
        })
    }

    /// Calls `f` with every entry of `data.tar.*` in archive order (the
    /// archive's root entry `./` is not passed).
    pub fn for_each_data_entry<E, F>(&self, mut f: F) -> Result<(), E>
    where
        E: From<DebError>,
        F: FnMut(DataEntry) -> Result<(), E>,
    {
        let member = &self.data;
        self.with_member(member, |reader| {
            read_tar(reader, &self.path, &member.name, &mut f).map_err(ReadTarError::flatten)
        })
    }

    /// Opens `member` decompressed and hands it to `f`.
    fn with_member<T, E: From<DebError>>(
        &self,
        member: &Member,
        f: impl FnOnce(&mut dyn Read) -> Result<T, E>,
    ) -> Result<T, E> {
        let file = File::open(&self.path).map_err(|source| DebError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut archive = ar::Archive::new(BufReader::with_capacity(READ_BUFFER, file));
        let mut entry = archive
            .jump_to_entry(member.index)
            .map_err(|source| DebError::Ar {
                path: self.path.clone(),
                source,
            })?;
        let mut reader = decompressor(&mut entry, &self.path, &member.name)?;
        let result = f(&mut *reader);
        drop(reader);
        // Skip whatever the consumer left unread instead of draining it.
        let _ = entry.seek(SeekFrom::End(0));
        result
    }
}

/// Streams the data entries of the `.deb` at `deb_path`, whose verified
/// SHA256 is `sha256`, through the unpacked cache under `cache_root`: read
/// from `<cache_root>/unpacked/<sha256>.tar.zst` when present, else from the
/// `.deb` while storing that copy (temporary file, then rename, so readers
/// never see a partial copy). A copy is stored only when every entry was
/// read and `f` never failed.
pub fn for_each_data_entry_cached<E, F>(
    deb_path: &Path,
    sha256: &str,
    cache_root: &Path,
    mut f: F,
) -> Result<CacheStatus, E>
where
    E: From<DebError>,
    F: FnMut(DataEntry) -> Result<(), E>,
{
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DebError::BadCacheKey {
            path: deb_path.to_path_buf(),
            sha256: sha256.to_string(),
        }
        .into());
    }
    let dir = cache_root.join("unpacked");
    let cached = dir.join(format!("{}.tar.zst", sha256.to_ascii_lowercase()));
    // A copy without its recorded SHA256 (written by an older applbuild)
    // is not trusted: it is unpacked from the `.deb` again and replaced.
    let opened = if digest_path(&cached).is_file() {
        File::open(&cached)
    } else {
        Err(io::ErrorKind::NotFound.into())
    };
    match opened {
        Ok(file) => {
            read_cached(&cached, file, &mut f)?;
            return Ok(CacheStatus::Hit);
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DebError::Io {
                path: cached,
                source,
            }
            .into());
        }
    }

    let deb = DebArchive::open(deb_path)?;
    let member = &deb.data;
    let (copy, failure) = match CacheWriter::create(&cached) {
        Ok(writer) => (Some(writer), None),
        Err(error) => (None, Some(format!("{}: {error}", dir.display()))),
    };
    let (copy, failure) = deb.with_member(member, |reader| {
        let mut tee = Tee {
            reader,
            copy,
            failure,
        };
        read_tar(&mut tee, &deb.path, &member.name, &mut f).map_err(ReadTarError::flatten)?;
        // tar stops at the end-of-archive marker; the copy must hold the
        // whole stream so it is a faithful data.tar.
        io::copy(&mut tee, &mut io::sink()).map_err(|source| DebError::Tar {
            path: deb.path.clone(),
            member: member.name.clone(),
            source,
        })?;
        Ok::<_, E>((tee.copy, tee.failure))
    })?;
    Ok(match (copy, failure) {
        (_, Some(reason)) => CacheStatus::NotStored(reason),
        (Some(writer), None) => match writer.commit() {
            Ok(()) => CacheStatus::Stored,
            Err(error) => CacheStatus::NotStored(format!("{}: {error}", cached.display())),
        },
        (None, None) => CacheStatus::NotStored("cache writer missing".to_string()),
    })
}

/// [`for_each_data_entry_cached`], collecting the entries; convenient for
/// unpacking several packages in parallel before inserting them in order.
pub fn read_data_entries_cached(
    deb_path: &Path,
    sha256: &str,
    cache_root: &Path,
) -> Result<(Vec<DataEntry>, CacheStatus), DebError> {
    let mut entries = Vec::new();
    let collect = |entries: &mut Vec<DataEntry>| {
        for_each_data_entry_cached(deb_path, sha256, cache_root, |entry| {
            entries.push(entry);
            Ok::<(), DebError>(())
        })
    };
    match collect(&mut entries) {
        Ok(status) => Ok((entries, status)),
        // The corrupt copy is gone: the second pass reads the `.deb`.
        Err(error @ DebError::CorruptCache { .. }) => {
            entries.clear();
            collect(&mut entries)?;
            Ok((entries, CacheStatus::Rebuilt(error.to_string())))
        }
        Err(error) => Err(error),
    }
}

/// Reads the cached copy; on a decoding failure the copy is deleted so the
/// next run rebuilds it.
fn read_cached<E, F>(cached: &Path, file: File, f: &mut F) -> Result<(), E>
where
    E: From<DebError>,
    F: FnMut(DataEntry) -> Result<(), E>,
{
    let corrupt = |source: DebError| {
        let _ = std::fs::remove_file(cached);
        DebError::CorruptCache {
            path: cached.to_path_buf(),
            source: Box::new(source),
        }
    };
    let member = "data.tar (cached)";
    let recorded = std::fs::read_to_string(digest_path(cached)).unwrap_or_default();
    let hashing = HashingReader {
        inner: file,
        hasher: Sha256::new(),
    };
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, hashing))
            .map_err(|source| {
                corrupt(DebError::Tar {
                    path: cached.to_path_buf(),
                    member: member.to_string(),
                    source,
                })
            })?;
    match read_tar(&mut decoder, cached, member, f) {
        Ok(()) => {}
        Err(ReadTarError::Read(error)) => return Err(corrupt(error).into()),
        Err(ReadTarError::Consumer(error)) => return Err(error),
    }
    // Reading to the end makes zstd verify the frame checksum.
    io::copy(&mut decoder, &mut io::sink()).map_err(|source| {
        corrupt(DebError::Tar {
            path: cached.to_path_buf(),
            member: member.to_string(),
            source,
        })
    })?;
    let mut rest = decoder.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(|source| {
        corrupt(DebError::Io {
            path: cached.to_path_buf(),
            source,
        })
    })?;
    let actual = hex::encode(rest.into_inner().hasher.finalize());
    if recorded.trim() != actual {
        return Err(corrupt(DebError::Io {
            path: cached.to_path_buf(),
            source: io::Error::other(format!("SHA256 {actual}, recorded {:?}", recorded.trim())),
        })
        .into());
    }
    Ok(())
}

/// The file beside a cached copy that holds its SHA256.
fn digest_path(cached: &Path) -> PathBuf {
    cached.with_extension("zst.sha256")
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Separates failures of the archive from failures of the entry consumer,
/// so a corrupt cache is recognised as such.
enum ReadTarError<E> {
    Read(DebError),
    Consumer(E),
}

impl<E: From<DebError>> ReadTarError<E> {
    /// The error as the consumer's type.
    fn flatten(self) -> E {
        match self {
            ReadTarError::Read(error) => error.into(),
            ReadTarError::Consumer(error) => error,
        }
    }
}

/// Parses a tar stream and passes each entry to `f`.
fn read_tar<E, F>(
    reader: &mut dyn Read,
    path: &Path,
    member: &str,
    f: &mut F,
) -> Result<(), ReadTarError<E>>
where
    F: FnMut(DataEntry) -> Result<(), E>,
{
    let tar_error = |source| {
        ReadTarError::Read(DebError::Tar {
            path: path.to_path_buf(),
            member: member.to_string(),
            source,
        })
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let place = EntryPlace {
            path,
            member,
            raw_path: entry.path_bytes().into_owned(),
        };
        if let Some(data_entry) = place.read(&mut entry).map_err(ReadTarError::Read)? {
            f(data_entry).map_err(ReadTarError::Consumer)?;
        }
    }
    Ok(())
}

/// Where a tar entry sits (archive, member, stored path), for reading it
/// and for naming it in errors.
struct EntryPlace<'a> {
    path: &'a Path,
    member: &'a str,
    raw_path: Vec<u8>,
}

impl EntryPlace<'_> {
    fn entry_name(&self) -> String {
        String::from_utf8_lossy(&self.raw_path).into_owned()
    }

    fn io_error(&self, source: io::Error) -> DebError {
        DebError::Entry {
            path: self.path.to_path_buf(),
            member: self.member.to_string(),
            entry: self.entry_name(),
            source,
        }
    }

    fn bad(&self, reason: &'static str) -> DebError {
        DebError::BadEntry {
            path: self.path.to_path_buf(),
            member: self.member.to_string(),
            entry: self.entry_name(),
            reason,
        }
    }

    /// The entry as a [`DataEntry`]; `None` for the archive's root (`./`).
    fn read<R: Read>(&self, entry: &mut tar::Entry<R>) -> Result<Option<DataEntry>, DebError> {
        let Some(normalized) = normalize(&self.raw_path) else {
            return Err(self.bad("path is not UTF-8 or leaves the root"));
        };
        if normalized.is_empty() {
            return Ok(None);
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.io_error(e))? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(|e| self.io_error(e))?)
            .map_err(|_| self.bad("uid does not fit 32 bits"))?;
        let gid = u32::try_from(header.gid().map_err(|e| self.io_error(e))?)
            .map_err(|_| self.bad("gid does not fit 32 bits"))?;
        Ok(Some(DataEntry {
            path: normalized,
            kind: self.kind(entry)?,
            mode,
            uid,
            gid,
        }))
    }

    /// File contents, link target or directory, by the entry's type.
    fn kind<R: Read>(&self, entry: &mut tar::Entry<R>) -> Result<EntryKind, DebError> {
        Ok(match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = usize::try_from(entry.size())
                    .map_err(|_| self.bad("file too large for memory"))?;
                let mut contents = Vec::with_capacity(size);
                entry
                    .read_to_end(&mut contents)
                    .map_err(|e| self.io_error(e))?;
                EntryKind::File(Arc::from(contents))
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad("symlink without target"))?;
                let target = String::from_utf8(target.into_owned())
                    .map_err(|_| self.bad("symlink target is not UTF-8"))?;
                EntryKind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad("hard link without target"))?;
                let target = normalize(&target)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.bad("hard link target is not UTF-8 or leaves the root"))?;
                EntryKind::Hardlink(target)
            }
            _ => return Err(self.bad("unsupported entry type (device, fifo or other)")),
        })
    }
}

/// Turns a stored path into the relative form used everywhere
/// (`./usr//bin/` becomes `usr/bin`); `None` for non-UTF-8 paths or paths
/// that climb above the root.
pub(crate) fn normalize(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(text.len());
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return None,
            name => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(name);
            }
        }
    }
    Some(out)
}

/// GNU ar terminates member names with `/`; BSD-style names are padded.
fn member_name(identifier: &[u8]) -> String {
    let name = String::from_utf8_lossy(identifier);
    name.trim_end().trim_end_matches('/').to_string()
}

/// Wraps a member's bytes in the decompressor its name calls for.
fn decompressor<'a>(
    reader: &'a mut dyn Read,
    path: &Path,
    member: &str,
) -> Result<Box<dyn Read + 'a>, DebError> {
    let setup = |source| DebError::Tar {
        path: path.to_path_buf(),
        member: member.to_string(),
        source,
    };
    Ok(match member.rsplit_once(".tar") {
        Some((_, "")) => Box::new(reader),
        Some((_, ".xz")) => {
            // dpkg-deb writes multi-block xz, so blocks decode in parallel.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(u32::try_from(threads).unwrap_or(1))
                .memlimit_threading(1 << 30)
                .memlimit_stop(u64::MAX)
                .decoder()
                .map_err(|source| DebError::XzSetup {
                    path: path.to_path_buf(),
                    member: member.to_string(),
                    source,
                })?;
            Box::new(liblzma::read::XzDecoder::new_stream(
                BufReader::with_capacity(READ_BUFFER, reader),
                stream,
            ))
        }
        Some((_, ".zst")) => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, reader))
                .map_err(setup)?,
        ),
        Some((_, ".gz")) => Box::new(flate2::read::GzDecoder::new(BufReader::with_capacity(
            READ_BUFFER,
            reader,
        ))),
        _ => {
            return Err(DebError::UnsupportedCompression {
                path: path.to_path_buf(),
                member: member.to_string(),
            });
        }
    })
}

/// A zstd level-1 copy being written to a temporary file beside its final
/// name.
struct CacheWriter {
    encoder: zstd::stream::write::Encoder<'static, io::BufWriter<HashingWriter>>,
    target: PathBuf,
}

/// An [`AtomicFile`] that hashes what is written to it.
struct HashingWriter {
    file: AtomicFile,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl CacheWriter {
    fn create(target: &Path) -> io::Result<Self> {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = HashingWriter {
            file: AtomicFile::create(target)?,
            hasher: Sha256::new(),
        };
        let mut encoder =
            zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(READ_BUFFER, temp), 1)?;
        encoder.include_checksum(true)?;
        Ok(Self {
            encoder,
            target: target.to_path_buf(),
        })
    }

    /// Publishes the copy, then its SHA256 (a copy without one is not used).
    fn commit(self) -> io::Result<()> {
        let HashingWriter { file, hasher } = self
            .encoder
            .finish()?
            .into_inner()
            .map_err(|error| error.into_error())?;
        file.commit()?;
        applbuild_fs::write_atomic(
            &digest_path(&self.target),
            hex::encode(hasher.finalize()).as_bytes(),
        )
    }
}

/// Copies everything read into the cache writer; a failing copy stops
/// copying (the build goes on) and is reported at the end.
struct Tee<'a> {
    reader: &'a mut dyn Read,
    copy: Option<CacheWriter>,
    failure: Option<String>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if let Some(writer) = &mut self.copy
            && let Err(error) = writer.encoder.write_all(&buf[..n])
        {
            self.failure = Some(format!("writing unpacked cache: {error}"));
            self.copy = None;
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How a test `.deb`'s data member is compressed.
    #[derive(Clone, Copy)]
    pub(crate) enum Compression {
        Xz,
        Zstd,
        Gzip,
        None,
    }

    /// A tar stream with the kinds of entries packages ship.
    pub(crate) fn sample_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add =
            |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>, data: &[u8]| {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(kind);
                header.set_mode(mode);
                header.set_uid(if path.ends_with("crontab") { 0 } else { 1000 });
                header.set_gid(if path.ends_with("crontab") { 107 } else { 1000 });
                header.set_size(data.len() as u64);
                header.set_mtime(1_700_000_000);
                if let Some(link) = link {
                    header.set_link_name(link).unwrap();
                }
                builder.append_data(&mut header, path, data).unwrap();
            };
        add("./", tar::EntryType::Directory, 0o755, None, b"");
        add("./usr/", tar::EntryType::Directory, 0o755, None, b"");
        add("./usr/bin/", tar::EntryType::Directory, 0o755, None, b"");
        add(
            "./usr/bin/crontab",
            tar::EntryType::Regular,
            0o2755,
            None,
            b"#!crontab\n",
        );
        add(
            "./usr/bin/cron-again",
            tar::EntryType::Link,
            0o2755,
            Some("./usr/bin/crontab"),
            b"",
        );
        add("./bin/", tar::EntryType::Directory, 0o755, None, b"");
        add(
            "./bin/sh",
            tar::EntryType::Symlink,
            0o777,
            Some("dash"),
            b"",
        );
        let long = format!("./usr/share/{}/file", "d".repeat(150));
        add(&long, tar::EntryType::Regular, 0o644, None, b"long name");
        builder.into_inner().unwrap()
    }

    fn compress(data: &[u8], compression: Compression) -> (Vec<u8>, &'static str) {
        match compression {
            Compression::Xz => {
                let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
                encoder.write_all(data).unwrap();
                (encoder.finish().unwrap(), ".xz")
            }
            Compression::Zstd => (zstd::encode_all(data, 1).unwrap(), ".zst"),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(data).unwrap();
                (encoder.finish().unwrap(), ".gz")
            }
            Compression::None => (data.to_vec(), ""),
        }
    }

    /// Writes a `.deb` with the given data tar; `members` can leave out
    /// members to test the errors.
    pub(crate) fn write_deb(
        path: &Path,
        data_tar: &[u8],
        compression: Compression,
        with_data: bool,
    ) {
        let mut control = tar::Builder::new(Vec::new());
        let text = b"Package: sample\nVersion: 1.0\nArchitecture: amd64\n";
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(text.len() as u64);
        control
            .append_data(&mut header, "./control", &text[..])
            .unwrap();
        let (control, control_ext) = compress(&control.into_inner().unwrap(), Compression::Xz);
        let (data, data_ext) = compress(data_tar, compression);
        let mut ar = ar::Builder::new(File::create(path).unwrap());
        let mut add = |name: String, bytes: &[u8]| {
            let header = ar::Header::new(name.into_bytes(), bytes.len() as u64);
            ar.append(&header, bytes).unwrap();
        };
        add("debian-binary".into(), b"2.0\n");
        add(format!("control.tar{control_ext}"), &control);
        if with_data {
            add(format!("data.tar{data_ext}"), &data);
        }
    }

    /// All entries of `data.tar.*`, in archive order.
    pub(crate) fn data_entries(deb: &DebArchive) -> Result<Vec<DataEntry>, DebError> {
        let mut entries = Vec::new();
        deb.for_each_data_entry(|entry| {
            entries.push(entry);
            Ok::<(), DebError>(())
        })?;
        Ok(entries)
    }

    fn collect(deb: &DebArchive) -> Vec<DataEntry> {
        data_entries(deb).unwrap()
    }

    #[test]
    fn reads_entries_and_control_for_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        for compression in [
            Compression::Xz,
            Compression::Zstd,
            Compression::Gzip,
            Compression::None,
        ] {
            let path = dir.path().join("sample.deb");
            write_deb(&path, &sample_tar(), compression, true);
            let deb = DebArchive::open(&path).unwrap();
            assert!(deb.control().unwrap().starts_with("Package: sample\n"));
            let entries = collect(&deb);
            let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            let long = format!("usr/share/{}/file", "d".repeat(150));
            assert_eq!(
                paths,
                [
                    "usr",
                    "usr/bin",
                    "usr/bin/crontab",
                    "usr/bin/cron-again",
                    "bin",
                    "bin/sh",
                    long.as_str()
                ]
            );
            let crontab = &entries[2];
            assert_eq!(
                crontab.kind,
                EntryKind::File(Arc::from(&b"#!crontab\n"[..]))
            );
            assert_eq!((crontab.mode, crontab.uid, crontab.gid), (0o2755, 0, 107));
            assert_eq!(
                entries[3].kind,
                EntryKind::Hardlink("usr/bin/crontab".into())
            );
            assert_eq!(entries[5].kind, EntryKind::Symlink("dash".into()));
            assert_eq!((entries[5].uid, entries[5].gid), (1000, 1000));
            assert_eq!(entries[0].kind, EntryKind::Dir);
        }
    }

    #[test]
    fn missing_data_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.deb");
        write_deb(&path, &sample_tar(), Compression::Xz, false);
        let error = DebArchive::open(&path).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("broken.deb") && text.contains("data.tar"),
            "{text}"
        );
    }

    #[test]
    fn not_an_ar_archive_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text.deb");
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(DebArchive::open(&path), Err(DebError::Ar { .. })));
    }

    #[test]
    fn truncated_data_names_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trunc.deb");
        let tar = sample_tar();
        let (xz, _) = compress(&tar, Compression::Xz);
        // An ar whose data member holds half an xz stream.
        let mut ar = ar::Builder::new(File::create(&path).unwrap());
        for (name, bytes) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar", &tar[..]),
            ("data.tar.xz", &xz[..xz.len() / 2]),
        ] {
            let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            ar.append(&header, bytes).unwrap();
        }
        drop(ar);
        let error = data_entries(&DebArchive::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("trunc.deb") && error.contains("data.tar.xz"),
            "{error}"
        );
    }

    #[test]
    fn normalize_strips_dots_and_refuses_escapes() {
        assert_eq!(normalize(b"./usr//bin/./ls").unwrap(), "usr/bin/ls");
        assert_eq!(normalize(b"/etc/").unwrap(), "etc");
        assert_eq!(normalize(b"./").unwrap(), "");
        assert!(normalize(b"./usr/../../etc").is_none());
        assert!(normalize(b"\xff").is_none());
    }

    #[test]
    fn cache_is_stored_then_used_and_matches_the_deb() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("sample.deb");
        let tar = sample_tar();
        write_deb(&deb, &tar, Compression::Xz, true);
        let sha = "ab".repeat(32);
        let cache = dir.path().join("cache");
        let (first, status) = read_data_entries_cached(&deb, &sha, &cache).unwrap();
        assert_eq!(status, CacheStatus::Stored);
        let stored = cache.join("unpacked").join(format!("{sha}.tar.zst"));
        // The copy is the complete data.tar, not just the entries read.
        assert_eq!(zstd::decode_all(File::open(&stored).unwrap()).unwrap(), tar);
        // No temporary files are left beside it and its SHA256.
        assert_eq!(
            std::fs::read_dir(cache.join("unpacked")).unwrap().count(),
            2
        );
        std::fs::remove_file(&deb).unwrap();
        let (second, status) = read_data_entries_cached(&deb, &sha, &cache).unwrap();
        assert_eq!(status, CacheStatus::Hit);
        assert_eq!(first, second);
        assert_eq!(first, {
            write_deb(&deb, &tar, Compression::Xz, true);
            collect(&DebArchive::open(&deb).unwrap())
        });
    }

    #[test]
    fn failing_consumer_stores_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("sample.deb");
        write_deb(&deb, &sample_tar(), Compression::Zstd, true);
        let sha = "cd".repeat(32);
        let cache = dir.path().join("cache");
        let result = for_each_data_entry_cached(&deb, &sha, &cache, |entry| {
            if entry.path == "bin/sh" {
                Err(DebError::NoControlFile {
                    path: "consumer".into(),
                    member: entry.path,
                })
            } else {
                Ok(())
            }
        });
        assert!(result.is_err());
        assert_eq!(
            std::fs::read_dir(cache.join("unpacked")).unwrap().count(),
            0
        );
    }

    #[test]
    fn corrupt_cache_is_discarded_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("sample.deb");
        write_deb(&deb, &sample_tar(), Compression::Gzip, true);
        let sha = "ef".repeat(32);
        let cache = dir.path().join("cache");
        read_data_entries_cached(&deb, &sha, &cache).unwrap();
        let stored = cache.join("unpacked").join(format!("{sha}.tar.zst"));
        let mut bytes = std::fs::read(&stored).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&stored, bytes).unwrap();
        let (entries, status) = read_data_entries_cached(&deb, &sha, &cache).unwrap();
        assert!(
            matches!(&status, CacheStatus::Rebuilt(reason) if reason.contains("corrupt")),
            "{status:?}"
        );
        assert_eq!(
            entries.len(),
            read_data_entries_cached(&deb, &sha, &cache)
                .unwrap()
                .0
                .len()
        );
        let (_, status) = read_data_entries_cached(&deb, &sha, &cache).unwrap();
        assert_eq!(status, CacheStatus::Hit);
    }

    #[test]
    fn cache_key_must_be_a_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_data_entries_cached(&dir.path().join("x.deb"), "../../etc", dir.path())
            .unwrap_err();
        assert!(matches!(error, DebError::BadCacheKey { .. }));
    }

    /// The hypervisor's kernel package, from applbuild's cache.
    #[test]
    fn real_kernel_package_unpacks() {
        let Some(kernel) = applbuild_testdata::or_skip(applbuild_testdata::kernel_deb()) else {
            return;
        };
        let deb = DebArchive::open(&kernel.path).unwrap();
        let control = deb.control().unwrap();
        assert!(
            control.contains(&format!("Package: {}\n", kernel.name)),
            "{control}"
        );
        assert!(
            control.contains(&format!("Version: {}\n", kernel.version)),
            "{control}"
        );
        let mut modules = 0;
        deb.for_each_data_entry(|entry| {
            if entry.path.ends_with(".ko") {
                modules += 1;
            }
            Ok::<(), DebError>(())
        })
        .unwrap();
        assert!(modules > 3000, "{modules} modules");
    }
}
