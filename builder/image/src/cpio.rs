//! Writes trees as cpio "newc" archives, the format the kernel unpacks an
//! initramfs from.
//!
//! Output depends only on the entries: they are written sorted by path
//! (parents before children), inode numbers count up from 1, every mtime is
//! the given value, and modes and owners come from the nodes.
//!
//! Hard links are written as links, not copies: all names of a file share
//! one inode number and carry its link count, and only the last of them
//! carries the data. That is the convention of GNU cpio; the kernel links
//! each later name to the first one it created and writes the data through
//! whichever name has it, so both unpack the same file once.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

use applbuild_rootfs::deb_archive::EntryKind;
use applbuild_rootfs::rootfs::Node;

/// `S_IFREG`, `S_IFDIR`, `S_IFLNK` of `stat(2)`.
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// The name that ends a newc archive.
pub const TRAILER: &str = "TRAILER!!!";

/// Writes `entries` as a newc archive ending in `TRAILER!!!` and returns the
/// number of bytes written. Entries are sorted by path first. A hard link
/// whose target is not among `entries` is an `InvalidInput` error, as is a
/// file of 4 GiB or more (newc sizes are 32 bits).
pub fn write_newc<'a, W: Write>(
    entries: impl IntoIterator<Item = (&'a str, &'a Node)>,
    mtime: u32,
    out: W,
) -> io::Result<u64> {
    let mut entries: Vec<(&str, &Node)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut members = Members {
        plan: LinkPlan::new(&entries)?,
        subdirs: subdir_counts(&entries),
        next_inode: 1,
        group_inodes: HashMap::new(),
    };
    let mut out = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        written: 0,
    };
    for index in 0..entries.len() {
        let (path, _) = entries[index];
        let (header, data) = members.member(&entries, index, mtime)?;
        write_header(&mut out, &header, path)?;
        out.write_all(data)?;
        pad(&mut out)?;
    }
    let trailer = Header {
        inode: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
    };
    write_header(&mut out, &trailer, TRAILER)?;
    out.flush()?;
    Ok(out.written)
}

/// How many subdirectories each directory has (for its link count).
fn subdir_counts<'a>(entries: &[(&'a str, &Node)]) -> HashMap<&'a str, u32> {
    let mut subdirs: HashMap<&str, u32> = HashMap::new();
    for (path, node) in entries {
        if node.kind == EntryKind::Dir {
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            *subdirs.entry(parent).or_default() += 1;
        }
    }
    subdirs
}

/// Hands out inode numbers and link counts while the sorted entries are
/// written one after the other.
struct Members<'a> {
    plan: LinkPlan,
    subdirs: HashMap<&'a str, u32>,
    next_inode: u32,
    group_inodes: HashMap<usize, u32>,
}

impl Members<'_> {
    /// The header and data of entry `index`.
    fn member<'e>(
        &mut self,
        entries: &[(&str, &'e Node)],
        index: usize,
        mtime: u32,
    ) -> io::Result<(Header, &'e [u8])> {
        let (path, node) = entries[index];
        let (file_type, nlink, data, inode, metadata): (u32, u32, &[u8], u32, &Node) =
            match &node.kind {
                EntryKind::Dir => {
                    let nlink = 2 + self.subdirs.get(path).copied().unwrap_or(0);
                    (S_IFDIR, nlink, &[], take(&mut self.next_inode), node)
                }
                EntryKind::Symlink(target) => (
                    S_IFLNK,
                    1,
                    target.as_bytes(),
                    take(&mut self.next_inode),
                    node,
                ),
                EntryKind::File(_) | EntryKind::Hardlink(_) => {
                    let group = self.plan.group_of[index];
                    let (file, members) = &self.plan.groups[group];
                    let file_node = entries[*file].1;
                    let EntryKind::File(contents) = &file_node.kind else {
                        unreachable!("link groups are built around regular files");
                    };
                    let next_inode = &mut self.next_inode;
                    let inode = *self
                        .group_inodes
                        .entry(group)
                        .or_insert_with(|| take(next_inode));
                    let last = *members.last().expect("a group has members");
                    let data: &[u8] = if index == last { contents } else { &[] };
                    (S_IFREG, members.len() as u32, data, inode, file_node)
                }
            };
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: {} bytes is too large for cpio newc", data.len()),
            )
        })?;
        let header = Header {
            inode,
            mode: file_type | (metadata.mode & 0o7777),
            uid: metadata.uid,
            gid: metadata.gid,
            nlink,
            mtime,
            size,
        };
        Ok((header, data))
    }
}

fn take(counter: &mut u32) -> u32 {
    let value = *counter;
    *counter += 1;
    value
}

/// Groups each regular file with its hard links.
struct LinkPlan {
    /// Per group: the file's entry index and all member indices in order.
    groups: Vec<(usize, Vec<usize>)>,
    /// Group of each file or hard-link entry (unused for others).
    group_of: Vec<usize>,
}

impl LinkPlan {
    fn new(entries: &[(&str, &Node)]) -> io::Result<Self> {
        let mut by_path: HashMap<&str, usize> = HashMap::new();
        let mut groups = Vec::new();
        let mut group_of = vec![usize::MAX; entries.len()];
        for (index, (path, node)) in entries.iter().enumerate() {
            if let EntryKind::File(_) = node.kind {
                by_path.insert(path, groups.len());
                group_of[index] = groups.len();
                groups.push((index, vec![index]));
            }
        }
        for (index, (path, node)) in entries.iter().enumerate() {
            if let EntryKind::Hardlink(target) = &node.kind {
                let group = *by_path.get(target.as_str()).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path}: hard link target {target} is not in the archive"),
                    )
                })?;
                group_of[index] = group;
                groups[group].1.push(index);
            }
        }
        for (_, members) in &mut groups {
            members.sort_unstable();
        }
        Ok(Self { groups, group_of })
    }
}

/// The numeric fields of a newc header this writer sets.
struct Header {
    inode: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
}

/// 110-byte header, NUL-terminated name, padding to 4 bytes.
fn write_header<W: Write>(
    out: &mut CountingWriter<W>,
    header: &Header,
    name: &str,
) -> io::Result<()> {
    let name_size = u32::try_from(name.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
    let mut bytes = [0u8; 110];
    bytes[..6].copy_from_slice(b"070701");
    let fields = [
        header.inode,
        header.mode,
        header.uid,
        header.gid,
        header.nlink,
        header.mtime,
        header.size,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name_size,
        0, // check
    ];
    for (i, value) in fields.iter().enumerate() {
        hex8(&mut bytes[6 + i * 8..14 + i * 8], *value);
    }
    out.write_all(&bytes)?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out)
}

fn hex8(slot: &mut [u8], value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for (i, byte) in slot.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
}

fn pad<W: Write>(out: &mut CountingWriter<W>) -> io::Result<()> {
    let padding = (4 - (out.written % 4) as usize) % 4;
    out.write_all(&[0; 3][..padding])
}

/// Counts bytes so padding can be computed from the stream position.
struct CountingWriter<W: Write> {
    inner: BufWriter<W>,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use applbuild_rootfs::rootfs::RootfsTree;
    use std::sync::Arc;

    /// One member as read back from an archive.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Member {
        pub name: String,
        pub inode: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub data: Vec<u8>,
    }

    /// A strict newc reader: checks magic, padding and the trailer.
    pub(crate) fn read_newc(mut bytes: &[u8]) -> Vec<Member> {
        let total = bytes.len();
        let mut members = Vec::new();
        loop {
            let offset = total - bytes.len();
            assert_eq!(offset % 4, 0, "header at {offset} not aligned");
            assert_eq!(&bytes[..6], b"070701", "magic at {offset}");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (inode, mode, uid, gid, nlink, mtime, size, name_size) = (
                field(0),
                field(1),
                field(2),
                field(3),
                field(4),
                field(5),
                field(6) as usize,
                field(11) as usize,
            );
            let name_end = 110 + name_size;
            assert_eq!(bytes[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(bytes[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            assert!(bytes[name_end..data_start].iter().all(|&b| b == 0));
            let data = bytes[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(next, bytes.len(), "bytes after trailer");
                return members;
            }
            members.push(Member {
                name,
                inode,
                mode,
                uid,
                gid,
                nlink,
                mtime,
                data,
            });
            bytes = &bytes[next..];
        }
    }

    fn sample_tree() -> RootfsTree {
        let mut tree = RootfsTree::new();
        tree.add_file("usr/bin/su", b"setuid binary".to_vec(), 0o4755, 0, 0)
            .unwrap();
        tree.add_file("etc/shadow", b"root:*:".to_vec(), 0o640, 0, 42)
            .unwrap();
        tree.add_dir("var/spool/cron/crontabs", 0o1730, 0, 107)
            .unwrap();
        tree.add_symlink("usr/bin/sh", "dash").unwrap();
        tree.add_file("etc/empty", Arc::<[u8]>::from(&b""[..]), 0o644, 0, 0)
            .unwrap();
        tree
    }

    #[test]
    fn round_trips_paths_modes_owners_and_data() {
        let tree = sample_tree();
        let mut bytes = Vec::new();
        let written = write_newc(tree.iter(), 1_234, &mut bytes).unwrap();
        assert_eq!(written, bytes.len() as u64);
        assert_eq!(bytes.len() % 4, 0);
        let members = read_newc(&bytes);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let expected: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(names, expected);
        let by_name = |name: &str| members.iter().find(|m| m.name == name).unwrap();
        let su = by_name("usr/bin/su");
        assert_eq!((su.mode, su.uid, su.gid), (0o104_755, 0, 0));
        assert_eq!(su.data, b"setuid binary");
        assert_eq!(su.mtime, 1_234);
        let shadow = by_name("etc/shadow");
        assert_eq!((shadow.mode, shadow.gid), (0o100_640, 42));
        let cron = by_name("var/spool/cron/crontabs");
        assert_eq!((cron.mode, cron.gid, cron.nlink), (0o041_730, 107, 2));
        assert_eq!(by_name("var/spool").nlink, 3);
        let sh = by_name("usr/bin/sh");
        assert_eq!((sh.mode, sh.data.as_slice()), (0o120_777, &b"dash"[..]));
        assert_eq!(by_name("bin").data, b"usr/bin");
        assert!(by_name("etc/empty").data.is_empty());
        // Inodes count up from 1 in path order.
        let inodes: Vec<u32> = members.iter().map(|m| m.inode).collect();
        assert_eq!(inodes, (1..=members.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn output_is_deterministic_and_order_independent() {
        let tree = sample_tree();
        let mut one = Vec::new();
        write_newc(tree.iter(), 0, &mut one).unwrap();
        let mut reversed: Vec<(&str, &Node)> = tree.iter().collect();
        reversed.reverse();
        let mut two = Vec::new();
        write_newc(reversed, 0, &mut two).unwrap();
        assert_eq!(one, two);
    }

    #[test]
    fn hard_links_share_an_inode_and_the_last_carries_data() {
        let file = Node {
            kind: EntryKind::File(Arc::from(&b"payload"[..])),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let link = Node {
            kind: EntryKind::Hardlink("b/file".into()),
            ..file.clone()
        };
        let entries = [("a/link", &link), ("b/file", &file), ("c/link", &link)];
        let mut bytes = Vec::new();
        write_newc(entries, 0, &mut bytes).unwrap();
        let members = read_newc(&bytes);
        assert_eq!(members.len(), 3);
        assert!(
            members
                .iter()
                .all(|m| m.inode == members[0].inode && m.nlink == 3)
        );
        assert!(members.iter().all(|m| m.mode == 0o100_755));
        assert!(members[0].data.is_empty() && members[1].data.is_empty());
        assert_eq!(members[2].data, b"payload");
        let error = write_newc([("a/link", &link)], 0, &mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("a/link"));
    }

    /// GNU cpio must list what the kernel will unpack.
    #[test]
    fn gnu_cpio_lists_the_archive() {
        let Ok(output) = std::process::Command::new("cpio").arg("--version").output() else {
            println!(
                "SKIPPED gnu_cpio_lists_the_archive: no cpio on this host (apt-get install cpio)"
            );
            return;
        };
        assert!(output.status.success());
        let tree = sample_tree();
        let mut bytes = Vec::new();
        write_newc(tree.iter(), 0, &mut bytes).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let listing = String::from_utf8(output.stdout).unwrap();
        assert!(listing.contains("-rwsr-xr-x"), "{listing}");
        assert!(listing.contains("usr/bin/sh -> dash"), "{listing}");
        assert!(listing.contains("drwx-wx--T"), "{listing}");
        assert_eq!(listing.lines().count(), tree.len());
    }
}
