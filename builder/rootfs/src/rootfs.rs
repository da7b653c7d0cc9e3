//! The image's root filesystem as an in-memory tree.
//!
//! Paths are relative (`usr/bin/ls`) and kept sorted, so parents always come
//! before their children. Owners and modes come from package headers or
//! from the caller, never from the host, so a build gives the same tree as
//! root or not.
//!
//! The tree behaves like dpkg unpacking onto a merged-/usr system that
//! debootstrap prepared: it starts with `bin -> usr/bin`, `sbin -> usr/sbin`,
//! `lib -> usr/lib` and `lib64 -> usr/lib64`, and every path is resolved
//! through symlinked parent directories, so a package's `/lib/x` lands in
//! `usr/lib/x`. Invariant: every ancestor of a node is a directory node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::deb_archive::{DataEntry, DebError, EntryKind, normalize};

/// The links debootstrap creates before unpacking on a merged-/usr system.
pub const MERGED_USR_LINKS: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// What the default [`PathFilter`] drops: documentation, manual and info
/// pages, translations, lintian overrides and bug-report scripts.
pub const DEFAULT_EXCLUDES: [&str; 6] = [
    "usr/share/doc/**",
    "usr/share/man/**",
    "usr/share/info/**",
    "usr/share/locale/**",
    "usr/share/lintian/**",
    "usr/share/bug/**",
];

/// What the default [`PathFilter`] keeps despite [`DEFAULT_EXCLUDES`]: the
/// licences must ship with the binaries.
pub const DEFAULT_INCLUDES: [&str; 1] = ["usr/share/doc/*/copyright"];

/// Symlinks built in may point anywhere; a resolution longer than this is a
/// loop (Linux's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Errors while building the tree; each names the path and who added it.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A parent of the path is a file, not a directory.
    #[error("{source_name}: {path}: parent {parent} is not a directory")]
    NotADirectory {
        /// The package, or `overlay` for API calls.
        source_name: String,
        /// The path being added.
        path: String,
        /// The ancestor that is a file.
        parent: String,
    },
    /// A non-directory would replace a directory that has contents.
    #[error("{source_name}: {path}: would replace a non-empty directory")]
    ReplacesDirectory {
        /// The package, or `overlay`.
        source_name: String,
        /// The path being added.
        path: String,
    },
    /// Resolving symlinked parents went round in circles.
    #[error("{source_name}: {path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The package, or `overlay`.
        source_name: String,
        /// The path being resolved.
        path: String,
    },
    /// A hard link points to something that is not a file in the tree.
    #[error("{source_name}: {path}: hard link target {target} is not a regular file")]
    HardlinkTarget {
        /// The package.
        source_name: String,
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A path is empty or climbs above the root.
    #[error("{source_name}: invalid path {path:?}")]
    BadPath {
        /// The package, or `overlay`.
        source_name: String,
        /// The rejected path.
        path: String,
    },
    /// A filter pattern is unusable.
    #[error("invalid path pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The rejected pattern.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
    /// Reading a package failed while inserting from a stream.
    #[error(transparent)]
    Deb(#[from] DebError),
}

/// One file, directory or link of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Kind and payload; a [`EntryKind::Hardlink`] always names a regular
    /// file of the tree and carries that file's mode and owner.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// How one tree differs from another ([`RootfsTree::changes_from`]); each
/// list sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeChanges {
    /// Paths only the newer tree has.
    pub added: Vec<String>,
    /// Paths both have, with another kind, mode, owner or contents.
    pub replaced: Vec<String>,
    /// Paths only the older tree has.
    pub removed: Vec<String>,
}

/// Counts of what a [`PathFilter`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Non-directory entries dropped (files and links).
    pub files: u64,
    /// Bytes of regular-file contents dropped.
    pub bytes: u64,
}

impl FilterStats {
    fn add(&mut self, other: FilterStats) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// A path a package replaced that an earlier package (or the overlay) had
/// put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwrite {
    /// The path.
    pub path: String,
    /// Who had it (`None`: the tree's initial layout or an API call).
    pub previous_owner: Option<String>,
}

/// What [`RootfsTree::insert_package`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertReport {
    /// Entries placed in the tree.
    pub added: u64,
    /// Paths taken over from an earlier owner.
    pub overwritten: Vec<Overwrite>,
    /// What the filter left out.
    pub dropped: FilterStats,
}

/// Decides which package paths stay out of the tree, like dpkg's
/// `path-exclude`/`path-include`: a path is dropped when an exclude pattern
/// matches and no include pattern does.
///
/// Patterns match whole relative paths, component by component: `*` and `?`
/// match within one component, `**` matches any number of components.
#[derive(Debug, Clone)]
pub struct PathFilter {
    excludes: Vec<Glob>,
    includes: Vec<Glob>,
}

impl Default for PathFilter {
    /// [`DEFAULT_EXCLUDES`] minus [`DEFAULT_INCLUDES`].
    fn default() -> Self {
        let mut filter = Self::none();
        for pattern in DEFAULT_EXCLUDES {
            filter.exclude(pattern).expect("built-in pattern is valid");
        }
        for pattern in DEFAULT_INCLUDES {
            filter.include(pattern).expect("built-in pattern is valid");
        }
        filter
    }
}

impl PathFilter {
    /// A filter that keeps everything.
    pub fn none() -> Self {
        Self {
            excludes: Vec::new(),
            includes: Vec::new(),
        }
    }

    /// Adds a pattern whose matches are dropped.
    pub fn exclude(&mut self, pattern: &str) -> Result<&mut Self, RootfsError> {
        self.excludes.push(Glob::parse(pattern)?);
        Ok(self)
    }

    /// Adds a pattern whose matches are kept even when excluded.
    pub fn include(&mut self, pattern: &str) -> Result<&mut Self, RootfsError> {
        self.includes.push(Glob::parse(pattern)?);
        Ok(self)
    }

    /// Whether `path` (relative, normalized) is left out.
    pub fn is_excluded(&self, path: &str) -> bool {
        if self.excludes.is_empty() {
            return false;
        }
        let components: Vec<&str> = path.split('/').collect();
        self.excludes.iter().any(|g| g.matches(&components))
            && !self.includes.iter().any(|g| g.matches(&components))
    }
}

/// One pattern component.
#[derive(Debug, Clone)]
enum GlobPart {
    /// `**`: zero or more components.
    AnyDepth,
    /// A component with optional `*` and `?`.
    Component(String),
}

/// A parsed path pattern.
#[derive(Debug, Clone)]
struct Glob {
    parts: Vec<GlobPart>,
}

impl Glob {
    fn parse(pattern: &str) -> Result<Self, RootfsError> {
        let bad = |reason| RootfsError::BadPattern {
            pattern: pattern.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        for component in pattern.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(bad("`..` is not allowed")),
                "**" => parts.push(GlobPart::AnyDepth),
                c if c.contains("**") => return Err(bad("`**` must be a whole component")),
                c if c.contains(['[', ']', '{', '}']) => {
                    return Err(bad("only `*`, `?` and `**` are supported"));
                }
                c => parts.push(GlobPart::Component(c.to_string())),
            }
        }
        if parts.is_empty() {
            return Err(bad("empty pattern"));
        }
        Ok(Self { parts })
    }

    fn matches(&self, path: &[&str]) -> bool {
        match_parts(&self.parts, path)
    }
}

fn match_parts(parts: &[GlobPart], path: &[&str]) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((GlobPart::AnyDepth, rest)) => {
            match_parts(rest, path) || (!path.is_empty() && match_parts(parts, &path[1..]))
        }
        Some((GlobPart::Component(pattern), rest)) => match path.split_first() {
            Some((first, tail)) => wildcard_matches(pattern, first) && match_parts(rest, tail),
            None => false,
        },
    }
}

/// Shell-style `*`/`?` matching of a whole string (no `/` handling, no
/// brackets): path components here, kernel module aliases as kmod matches
/// them. Iterative, with backtracking to the last `*`, so it stays linear
/// on patterns with many stars.
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The root filesystem being assembled. See the module documentation for
/// how paths are resolved.
#[derive(Debug, Clone)]
pub struct RootfsTree {
    nodes: BTreeMap<String, Node>,
    /// Which package put each path there; absent for the initial layout and
    /// API additions.
    owners: HashMap<String, Arc<str>>,
    /// Directories created only as parents: a package's own entry for them
    /// sets their mode and owner.
    implicit_dirs: HashSet<String>,
    /// Paths of hard-link nodes, to find a file's links when it goes away.
    hardlinks: BTreeSet<String>,
    dropped: FilterStats,
}

impl Default for RootfsTree {
    fn default() -> Self {
        Self::new()
    }
}

/// Which label errors use for API additions.
const OVERLAY: &str = "overlay";

impl RootfsTree {
    /// A tree holding the merged-/usr layout: `usr/{bin,sbin,lib,lib64}`
    /// (0755 root) and the [`MERGED_USR_LINKS`].
    pub fn new() -> Self {
        let mut tree = Self {
            nodes: BTreeMap::new(),
            owners: HashMap::new(),
            implicit_dirs: HashSet::new(),
            hardlinks: BTreeSet::new(),
            dropped: FilterStats::default(),
        };
        for (link, target) in MERGED_USR_LINKS {
            tree.create_parents(target, None);
            tree.nodes.insert(target.to_string(), implicit_dir());
            tree.implicit_dirs.insert(target.to_string());
            tree.nodes
                .insert(link.to_string(), symlink_node(target.to_string()));
        }
        tree
    }

    /// Adds a package's entries in archive order. Later packages replace
    /// earlier packages' files (reported in [`InsertReport::overwritten`]);
    /// a directory entry for an existing directory keeps the existing one,
    /// unless it was only created as a parent, and one for a symlink keeps
    /// the symlink (dpkg follows it).
    pub fn insert_package(
        &mut self,
        package: &str,
        entries: impl IntoIterator<Item = DataEntry>,
        filter: &PathFilter,
    ) -> Result<InsertReport, RootfsError> {
        let owner: Arc<str> = Arc::from(package);
        let mut report = InsertReport::default();
        // Files the filter dropped, kept so a hard link to one of them can
        // still become a file of its own.
        let mut dropped_files: HashMap<String, Node> = HashMap::new();
        for entry in entries {
            let path = self.resolve_parents(&entry.path, package)?;
            if filter.is_excluded(&path) {
                match &entry.kind {
                    EntryKind::Dir => {}
                    EntryKind::File(contents) => {
                        report.dropped.files += 1;
                        report.dropped.bytes += contents.len() as u64;
                        dropped_files.insert(
                            path,
                            Node {
                                kind: entry.kind.clone(),
                                mode: entry.mode,
                                uid: entry.uid,
                                gid: entry.gid,
                            },
                        );
                    }
                    EntryKind::Symlink(_) | EntryKind::Hardlink(_) => report.dropped.files += 1,
                }
                continue;
            }
            let node = match entry.kind {
                EntryKind::Hardlink(target) => {
                    let resolved = self.resolve_parents(&target, package)?;
                    match self.link_target(&resolved) {
                        Some((target, file)) => Node {
                            kind: EntryKind::Hardlink(target),
                            ..file
                        },
                        None => match dropped_files.get(&resolved) {
                            Some(file) => file.clone(),
                            None => {
                                return Err(RootfsError::HardlinkTarget {
                                    source_name: package.to_string(),
                                    path,
                                    target: resolved,
                                });
                            }
                        },
                    }
                }
                kind => Node {
                    kind,
                    mode: entry.mode,
                    uid: entry.uid,
                    gid: entry.gid,
                },
            };
            if let Some(previous_owner) = self.put(path.clone(), node, Some(&owner), false)?
                && previous_owner.as_deref() != Some(package)
            {
                report.overwritten.push(Overwrite {
                    path,
                    previous_owner: previous_owner.map(|o| o.to_string()),
                });
            }
            report.added += 1;
        }
        self.dropped.add(report.dropped);
        Ok(report)
    }

    /// Adds or replaces a regular file (an overlay or generated file).
    pub fn add_file(
        &mut self,
        path: &str,
        contents: impl Into<Arc<[u8]>>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), RootfsError> {
        let path = self.api_path(path)?;
        let node = Node {
            kind: EntryKind::File(contents.into()),
            mode: mode & 0o7777,
            uid,
            gid,
        };
        self.put(path, node, None, true).map(drop)
    }

    /// Adds a directory, or sets the mode and owner of an existing one.
    pub fn add_dir(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), RootfsError> {
        let path = self.api_path(path)?;
        let node = Node {
            kind: EntryKind::Dir,
            mode: mode & 0o7777,
            uid,
            gid,
        };
        self.put(path, node, None, true).map(drop)
    }

    /// Adds or replaces a symlink (mode 0777, owned by root).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), RootfsError> {
        let path = self.api_path(path)?;
        self.put(path, symlink_node(target.to_string()), None, true)
            .map(drop)
    }

    /// Removes `path` and everything below it; returns how many nodes went.
    /// Hard links elsewhere to a removed file keep its contents.
    pub fn remove(&mut self, path: &str) -> Result<usize, RootfsError> {
        let path = self.api_path(path)?;
        let doomed = self.subtree_keys(&path);
        if doomed.is_empty() {
            return Ok(0);
        }
        let doomed_set: HashSet<&str> = doomed.iter().map(String::as_str).collect();
        for link in &doomed {
            self.hardlinks.remove(link);
        }
        for key in &doomed {
            if matches!(
                self.nodes.get(key).map(|n| &n.kind),
                Some(EntryKind::File(_))
            ) {
                self.detach_links(key, &doomed_set);
            }
        }
        for key in &doomed {
            self.nodes.remove(key);
            self.owners.remove(key);
            self.implicit_dirs.remove(key);
        }
        Ok(doomed.len())
    }

    /// The node at `path`, resolving symlinked parents (so `bin/sh` finds
    /// `usr/bin/sh`); the last component is not followed.
    pub fn get(&self, path: &str) -> Option<&Node> {
        let path = normalize(path.as_bytes()).filter(|p| !p.is_empty())?;
        let resolved = self.resolve_parents(&path, OVERLAY).ok()?;
        self.nodes.get(&resolved)
    }

    /// The package that put `path` (exact, resolved path) there.
    pub fn owner(&self, path: &str) -> Option<&str> {
        self.owners.get(path).map(|o| &**o)
    }

    /// Every node, sorted by path (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// The nodes strictly below directory `dir` (exact, resolved path),
    /// sorted.
    pub fn iter_under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> {
        let prefix = format!("{dir}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, n)| (p.as_str(), n))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no nodes at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of regular-file contents (hard links not counted twice).
    pub fn total_size(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                EntryKind::File(c) => c.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Everything the filters dropped so far.
    pub fn dropped(&self) -> FilterStats {
        self.dropped
    }

    /// SHA256 of the whole tree (see [`digest_entries`]): equal trees give
    /// equal digests, whatever order they were built in.
    pub fn digest(&self) -> [u8; 32] {
        digest_entries(self.iter())
    }

    /// How this tree differs from `base`, path by path: what it adds, what
    /// it holds differently (kind, mode, owner or contents) and what it
    /// lacks.
    pub fn changes_from(&self, base: &RootfsTree) -> TreeChanges {
        let mut changes = TreeChanges::default();
        for (path, node) in &self.nodes {
            match base.nodes.get(path) {
                None => changes.added.push(path.clone()),
                Some(old) if old != node => changes.replaced.push(path.clone()),
                Some(_) => {}
            }
        }
        changes.removed = base
            .nodes
            .keys()
            .filter(|path| !self.nodes.contains_key(*path))
            .cloned()
            .collect();
        changes
    }

    /// A tree of only `paths` (exact paths of this tree) and their parent
    /// directories, as this tree has them, on the merged-/usr layout. A hard
    /// link becomes a copy of its file: the file may not be among `paths`.
    pub fn extract<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> RootfsTree {
        let mut extracted = RootfsTree::new();
        for path in paths {
            let mut ancestor = path;
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if let Some(node) = self.nodes.get(parent) {
                    extracted.nodes.insert(parent.to_string(), node.clone());
                    extracted.implicit_dirs.remove(parent);
                }
                ancestor = parent;
            }
            let Some(node) = self.nodes.get(path) else {
                continue;
            };
            let node = match &node.kind {
                EntryKind::Hardlink(target) => Node {
                    kind: self.nodes[target].kind.clone(),
                    ..node.clone()
                },
                _ => node.clone(),
            };
            extracted.nodes.insert(path.to_string(), node);
            if let Some(owner) = self.owners.get(path) {
                extracted.owners.insert(path.to_string(), owner.clone());
            }
        }
        extracted
    }

    /// Normalizes a caller's path and resolves its parents.
    fn api_path(&self, path: &str) -> Result<String, RootfsError> {
        let normalized = normalize(path.as_bytes())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| RootfsError::BadPath {
                source_name: OVERLAY.to_string(),
                path: path.to_string(),
            })?;
        self.resolve_parents(&normalized, OVERLAY)
    }

    /// Rewrites `path` so that no parent is a symlink, following links the
    /// way the kernel would when dpkg writes through them. Missing parents
    /// are fine (they will be created); a parent that is a file is not.
    fn resolve_parents(&self, path: &str, source_name: &str) -> Result<String, RootfsError> {
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => return Ok(path.to_string()),
        };
        // Fast path: by the tree's invariant, an existing parent directory
        // has only directories above it.
        if matches!(
            self.nodes.get(parent).map(|n| &n.kind),
            Some(EntryKind::Dir)
        ) {
            return Ok(path.to_string());
        }
        let mut pending: Vec<String> = parent.rsplit('/').map(str::to_string).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let joined = resolved.join("/");
            match self.nodes.get(&joined).map(|n| &n.kind) {
                None | Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(RootfsError::SymlinkLoop {
                            source_name: source_name.to_string(),
                            path: path.to_string(),
                        });
                    }
                    resolved.pop();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    pending.extend(target.rsplit('/').map(str::to_string));
                }
                Some(EntryKind::File(_) | EntryKind::Hardlink(_)) => {
                    return Err(RootfsError::NotADirectory {
                        source_name: source_name.to_string(),
                        path: path.to_string(),
                        parent: joined,
                    });
                }
            }
        }
        resolved.push(name.to_string());
        Ok(resolved.join("/"))
    }

    /// The regular file a new hard link to `path` should share, following a
    /// link to a link: `(file path, file node)`.
    fn link_target(&self, path: &str) -> Option<(String, Node)> {
        let node = self.nodes.get(path)?;
        match &node.kind {
            EntryKind::File(_) => Some((path.to_string(), node.clone())),
            EntryKind::Hardlink(target) => {
                let file = self.nodes.get(target)?.clone();
                Some((target.clone(), file))
            }
            _ => None,
        }
    }

    /// Places `node` at the resolved `path`. Returns `Some(previous owner)`
    /// when a non-directory was replaced or a directory was replaced by a
    /// non-directory. `authoritative` (API calls) also updates an existing
    /// directory's mode and owner.
    fn put(
        &mut self,
        path: String,
        node: Node,
        owner: Option<&Arc<str>>,
        authoritative: bool,
    ) -> Result<Option<Option<Arc<str>>>, RootfsError> {
        self.create_parents(&path, owner);
        let new_is_dir = matches!(node.kind, EntryKind::Dir);
        let replaced = match self.nodes.get(&path).map(|n| &n.kind) {
            None => None,
            Some(EntryKind::Dir) if new_is_dir => {
                if self.implicit_dirs.remove(&path) || authoritative {
                    self.nodes.insert(path.clone(), node);
                    self.set_owner(&path, owner);
                }
                return Ok(None);
            }
            Some(EntryKind::Symlink(_)) if new_is_dir && !authoritative => return Ok(None),
            Some(EntryKind::Dir) => {
                if self.iter_under(&path).next().is_some() {
                    return Err(RootfsError::ReplacesDirectory {
                        source_name: owner.map_or(OVERLAY.to_string(), |o| o.to_string()),
                        path,
                    });
                }
                self.implicit_dirs.remove(&path);
                Some(self.owners.get(&path).cloned())
            }
            Some(EntryKind::File(_)) => {
                self.detach_links(&path, &HashSet::new());
                Some(self.owners.get(&path).cloned())
            }
            Some(EntryKind::Symlink(_)) => Some(self.owners.get(&path).cloned()),
            Some(EntryKind::Hardlink(_)) => {
                self.hardlinks.remove(&path);
                Some(self.owners.get(&path).cloned())
            }
        };
        if matches!(node.kind, EntryKind::Hardlink(_)) {
            self.hardlinks.insert(path.clone());
        }
        self.nodes.insert(path.clone(), node);
        self.set_owner(&path, owner);
        Ok(replaced)
    }

    fn set_owner(&mut self, path: &str, owner: Option<&Arc<str>>) {
        match owner {
            Some(owner) => {
                self.owners.insert(path.to_string(), owner.clone());
            }
            None => {
                self.owners.remove(path);
            }
        }
    }

    /// Creates missing ancestors of a resolved path as 0755 root directories,
    /// owned by the package whose entry needed them (so a package's
    /// directories stay with the package when the image is split).
    fn create_parents(&mut self, path: &str, owner: Option<&Arc<str>>) {
        let mut missing = Vec::new();
        let mut current = path;
        while let Some((parent, _)) = current.rsplit_once('/') {
            if self.nodes.contains_key(parent) {
                break;
            }
            missing.push(parent.to_string());
            current = parent;
        }
        for dir in missing.into_iter().rev() {
            self.implicit_dirs.insert(dir.clone());
            self.set_owner(&dir, owner);
            self.nodes.insert(dir, implicit_dir());
        }
    }

    /// Before the file at `path` is replaced or removed, makes its first
    /// hard link (not in `except`) the file and points the others at it, as
    /// on a real filesystem where the links keep the old inode.
    fn detach_links(&mut self, path: &str, except: &HashSet<&str>) {
        let dependents: Vec<String> = self
            .hardlinks
            .iter()
            .filter(|link| !except.contains(link.as_str()))
            .filter(|link| {
                matches!(self.nodes.get(*link).map(|n| &n.kind),
                    Some(EntryKind::Hardlink(target)) if target == path)
            })
            .cloned()
            .collect();
        let Some((primary, others)) = dependents.split_first() else {
            return;
        };
        let Some(file) = self.nodes.get(path).cloned() else {
            return;
        };
        self.hardlinks.remove(primary);
        self.nodes.insert(primary.clone(), file);
        for link in others {
            if let Some(node) = self.nodes.get_mut(link) {
                node.kind = EntryKind::Hardlink(primary.clone());
            }
        }
    }

    /// `path` and the keys below it.
    fn subtree_keys(&self, path: &str) -> Vec<String> {
        if !self.nodes.contains_key(path) {
            return Vec::new();
        }
        std::iter::once(path.to_string())
            .chain(self.iter_under(path).map(|(p, _)| p.to_string()))
            .collect()
    }
}

fn implicit_dir() -> Node {
    Node {
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

fn symlink_node(target: String) -> Node {
    Node {
        kind: EntryKind::Symlink(target),
        mode: 0o777,
        uid: 0,
        gid: 0,
    }
}

/// SHA256 over a canonical serialization of `entries` (in the order given;
/// callers pass sorted paths): a version tag, then per entry the
/// length-prefixed path, a kind byte, mode, uid and gid (little-endian u32),
/// and the length-prefixed contents or link target. Length prefixes keep
/// different trees from serializing to the same bytes.
pub fn digest_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Node)>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"applbuild-rootfs-v1\0");
    let field = |hasher: &mut Sha256, bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for (path, node) in entries {
        field(&mut hasher, path.as_bytes());
        let (tag, payload): (u8, &[u8]) = match &node.kind {
            EntryKind::File(contents) => (b'f', contents),
            EntryKind::Dir => (b'd', &[]),
            EntryKind::Symlink(target) => (b'l', target.as_bytes()),
            EntryKind::Hardlink(target) => (b'h', target.as_bytes()),
        };
        hasher.update([tag]);
        hasher.update(node.mode.to_le_bytes());
        hasher.update(node.uid.to_le_bytes());
        hasher.update(node.gid.to_le_bytes());
        field(&mut hasher, payload);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, contents: &[u8]) -> DataEntry {
        DataEntry {
            path: path.to_string(),
            kind: EntryKind::File(Arc::from(contents)),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn dir(path: &str, mode: u32, gid: u32) -> DataEntry {
        DataEntry {
            path: path.to_string(),
            kind: EntryKind::Dir,
            mode,
            uid: 0,
            gid,
        }
    }

    fn entry(path: &str, kind: EntryKind) -> DataEntry {
        DataEntry {
            path: path.to_string(),
            kind,
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }

    fn contents(tree: &RootfsTree, path: &str) -> Option<Vec<u8>> {
        match &tree.nodes.get(path)?.kind {
            EntryKind::File(c) => Some(c.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn changes_list_added_replaced_and_removed_paths_and_extract_keeps_parents() {
        let mut base = RootfsTree::new();
        base.add_dir("var/lib/secret", 0o700, 0, 0).unwrap();
        base.add_file("etc/keep", &b"same"[..], 0o644, 0, 0)
            .unwrap();
        base.add_file("etc/edit", &b"old"[..], 0o644, 0, 0).unwrap();
        base.add_file("etc/gone", &b"x"[..], 0o644, 0, 0).unwrap();
        let mut newer = base.clone();
        newer
            .add_file("etc/edit", &b"new"[..], 0o644, 0, 0)
            .unwrap();
        newer
            .add_file("var/lib/secret/agent", &b"a"[..], 0o600, 0, 0)
            .unwrap();
        newer.remove("etc/gone").unwrap();
        let changes = newer.changes_from(&base);
        assert_eq!(changes.added, ["var/lib/secret/agent"]);
        assert_eq!(changes.replaced, ["etc/edit"]);
        assert_eq!(changes.removed, ["etc/gone"]);

        let extracted = newer.extract(["etc/edit", "var/lib/secret/agent"]);
        assert_eq!(contents(&extracted, "etc/edit").unwrap(), b"new");
        assert!(extracted.get("etc/keep").is_none());
        // A parent keeps the mode it has in the tree, not a default one.
        assert_eq!(extracted.get("var/lib/secret").unwrap().mode, 0o700);
    }

    #[test]
    fn new_tree_has_merged_usr_links() {
        let tree = RootfsTree::new();
        for (link, target) in MERGED_USR_LINKS {
            assert_eq!(
                tree.nodes[link].kind,
                EntryKind::Symlink(target.to_string())
            );
            assert_eq!(tree.nodes[target].kind, EntryKind::Dir);
        }
    }

    #[test]
    fn legacy_paths_land_in_usr() {
        let mut tree = RootfsTree::new();
        let entries = vec![
            dir("bin", 0o755, 0),
            file("bin/sh", b"dash"),
            dir("lib/x86_64-linux-gnu", 0o755, 0),
            file("lib/x86_64-linux-gnu/libc.so.6", b"libc"),
            entry(
                "lib64/ld-linux-x86-64.so.2",
                EntryKind::Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
            ),
            entry("sbin/hardsh", EntryKind::Hardlink("bin/sh".into())),
        ];
        tree.insert_package("libc6", entries, &PathFilter::none())
            .unwrap();
        assert_eq!(contents(&tree, "usr/bin/sh").unwrap(), b"dash");
        assert_eq!(
            contents(&tree, "usr/lib/x86_64-linux-gnu/libc.so.6").unwrap(),
            b"libc"
        );
        assert_eq!(
            tree.nodes["usr/lib64/ld-linux-x86-64.so.2"].kind,
            EntryKind::Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(
            tree.nodes["usr/sbin/hardsh"].kind,
            EntryKind::Hardlink("usr/bin/sh".into())
        );
        assert_eq!(tree.nodes["bin"].kind, EntryKind::Symlink("usr/bin".into()));
        assert!(!tree.nodes.contains_key("lib/x86_64-linux-gnu"));
        assert_eq!(tree.get("bin/sh"), tree.nodes.get("usr/bin/sh"));
        assert_eq!(tree.owner("usr/bin/sh"), Some("libc6"));
        // Parents created for a package's entry belong to that package; the
        // initial layout belongs to nobody.
        assert_eq!(tree.owner("usr/lib64"), None);
        tree.insert_package("x", vec![file("opt/x/y", b"")], &PathFilter::none())
            .unwrap();
        assert_eq!(tree.owner("opt/x"), Some("x"));
        tree.add_file("srv/a/b", b"".to_vec(), 0o644, 0, 0).unwrap();
        assert_eq!(tree.owner("srv/a"), None);
    }

    #[test]
    fn later_package_overwrites_and_is_reported() {
        let mut tree = RootfsTree::new();
        tree.insert_package("a", vec![file("etc/x", b"a")], &PathFilter::none())
            .unwrap();
        let report = tree
            .insert_package("b", vec![file("etc/x", b"b")], &PathFilter::none())
            .unwrap();
        assert_eq!(contents(&tree, "etc/x").unwrap(), b"b");
        assert_eq!(tree.owner("etc/x"), Some("b"));
        assert_eq!(
            report.overwritten,
            vec![Overwrite {
                path: "etc/x".into(),
                previous_owner: Some("a".into())
            }]
        );
    }

    #[test]
    fn explicit_directory_entry_sets_implicit_parent_but_not_existing() {
        let mut tree = RootfsTree::new();
        tree.insert_package(
            "a",
            vec![file("var/spool/cron/x", b"")],
            &PathFilter::none(),
        )
        .unwrap();
        assert_eq!(tree.nodes["var/spool/cron"].mode, 0o755);
        tree.insert_package(
            "cron",
            vec![dir("var/spool/cron", 0o1730, 42)],
            &PathFilter::none(),
        )
        .unwrap();
        assert_eq!(tree.nodes["var/spool/cron"].mode, 0o1730);
        assert_eq!(tree.nodes["var/spool/cron"].gid, 42);
        tree.insert_package(
            "other",
            vec![dir("var/spool/cron", 0o755, 0)],
            &PathFilter::none(),
        )
        .unwrap();
        assert_eq!(tree.nodes["var/spool/cron"].mode, 0o1730);
        assert_eq!(tree.owner("var/spool/cron"), Some("cron"));
    }

    #[test]
    fn directory_entry_keeps_symlink_and_writes_through_it() {
        let mut tree = RootfsTree::new();
        tree.add_symlink("var/run", "/run").unwrap();
        tree.insert_package(
            "p",
            vec![dir("var/run", 0o755, 0), file("var/run/p.pid", b"1")],
            &PathFilter::none(),
        )
        .unwrap();
        assert_eq!(
            tree.nodes["var/run"].kind,
            EntryKind::Symlink("/run".into())
        );
        assert_eq!(contents(&tree, "run/p.pid").unwrap(), b"1");
    }

    #[test]
    fn file_cannot_replace_non_empty_directory_or_sit_below_file() {
        let mut tree = RootfsTree::new();
        tree.add_file("etc/a/b", b"x".to_vec(), 0o644, 0, 0)
            .unwrap();
        let error = tree
            .insert_package("p", vec![file("etc/a", b"")], &PathFilter::none())
            .unwrap_err();
        assert!(
            matches!(error, RootfsError::ReplacesDirectory { ref path, .. } if path == "etc/a")
        );
        let error = tree
            .add_file("etc/a/b/c", b"x".to_vec(), 0o644, 0, 0)
            .unwrap_err();
        assert!(error.to_string().contains("etc/a/b"), "{error}");
    }

    #[test]
    fn symlink_loops_are_errors() {
        let mut tree = RootfsTree::new();
        tree.add_symlink("a", "b").unwrap();
        tree.add_symlink("b", "a").unwrap();
        let error = tree.add_file("a/x", b"".to_vec(), 0o644, 0, 0).unwrap_err();
        assert!(matches!(error, RootfsError::SymlinkLoop { .. }));
    }

    #[test]
    fn relative_symlinked_parent_resolves_against_its_directory() {
        let mut tree = RootfsTree::new();
        tree.add_dir("opt/real", 0o700, 0, 0).unwrap();
        tree.add_symlink("opt/link", "../opt/./real").unwrap();
        tree.add_file("opt/link/f", b"1".to_vec(), 0o600, 1, 2)
            .unwrap();
        let node = &tree.nodes["opt/real/f"];
        assert_eq!((node.mode, node.uid, node.gid), (0o600, 1, 2));
    }

    #[test]
    fn default_filter_drops_docs_but_keeps_copyright() {
        let mut tree = RootfsTree::new();
        let report = tree
            .insert_package(
                "p",
                vec![
                    dir("usr/share/doc/p", 0o755, 0),
                    file("usr/share/doc/p/copyright", b"GPL"),
                    file("usr/share/doc/p/changelog.gz", b"12345"),
                    file("usr/share/man/man1/p.1.gz", b"123"),
                    entry("usr/share/doc/q", EntryKind::Symlink("p".into())),
                    file("usr/share/locale/de/LC_MESSAGES/p.mo", b"1"),
                    file("usr/share/docs-not-really/x", b"kept"),
                    file("usr/bin/p", b"bin"),
                ],
                &PathFilter::default(),
            )
            .unwrap();
        assert_eq!(report.dropped, FilterStats { files: 4, bytes: 9 });
        assert_eq!(tree.dropped(), report.dropped);
        assert!(tree.nodes.contains_key("usr/share/doc/p/copyright"));
        assert!(!tree.nodes.contains_key("usr/share/doc/p/changelog.gz"));
        assert!(!tree.nodes.contains_key("usr/share/doc/q"));
        assert!(tree.nodes.contains_key("usr/share/docs-not-really/x"));
        assert!(tree.nodes.contains_key("usr/bin/p"));
    }

    #[test]
    fn glob_matching() {
        let mut filter = PathFilter::none();
        filter
            .exclude("usr/lib/**/*.a")
            .unwrap()
            .exclude("/etc/?ron*")
            .unwrap();
        assert!(filter.is_excluded("usr/lib/libx.a"));
        assert!(filter.is_excluded("usr/lib/x86_64-linux-gnu/deep/libx.a"));
        assert!(!filter.is_excluded("usr/lib/libx.so"));
        assert!(!filter.is_excluded("usr/libx.a"));
        assert!(filter.is_excluded("etc/cron.daily"));
        assert!(!filter.is_excluded("etc/cron.daily/x"));
        assert!(wildcard_matches("*a*b", "xxaxxb"));
        assert!(!wildcard_matches("*a*b", "xxaxxbc"));
        assert!(PathFilter::none().exclude("a/**b").is_err());
        assert!(PathFilter::none().exclude("a/[ab]").is_err());
        assert!(PathFilter::none().exclude("/").is_err());
    }

    #[test]
    fn hardlink_to_dropped_file_becomes_a_file() {
        let mut filter = PathFilter::none();
        filter.exclude("usr/share/x/**").unwrap();
        let mut tree = RootfsTree::new();
        tree.insert_package(
            "p",
            vec![
                file("usr/share/x/data", b"payload"),
                entry(
                    "usr/bin/data",
                    EntryKind::Hardlink("usr/share/x/data".into()),
                ),
            ],
            &filter,
        )
        .unwrap();
        assert_eq!(contents(&tree, "usr/bin/data").unwrap(), b"payload");
        assert_eq!(tree.nodes["usr/bin/data"].mode, 0o644);
    }

    #[test]
    fn hardlinks_survive_replacement_and_removal_of_their_file() {
        let mut tree = RootfsTree::new();
        tree.insert_package(
            "p",
            vec![
                file("usr/bin/a", b"old"),
                entry("usr/bin/b", EntryKind::Hardlink("usr/bin/a".into())),
                entry("usr/bin/c", EntryKind::Hardlink("usr/bin/b".into())),
            ],
            &PathFilter::none(),
        )
        .unwrap();
        assert_eq!(
            tree.nodes["usr/bin/c"].kind,
            EntryKind::Hardlink("usr/bin/a".into())
        );
        tree.add_file("usr/bin/a", b"new".to_vec(), 0o755, 0, 0)
            .unwrap();
        assert_eq!(contents(&tree, "usr/bin/a").unwrap(), b"new");
        assert_eq!(contents(&tree, "usr/bin/b").unwrap(), b"old");
        assert_eq!(
            tree.nodes["usr/bin/c"].kind,
            EntryKind::Hardlink("usr/bin/b".into())
        );
        tree.remove("usr/bin/b").unwrap();
        assert_eq!(contents(&tree, "usr/bin/c").unwrap(), b"old");
        assert!(tree.hardlinks.is_empty());
    }

    #[test]
    fn hardlink_to_missing_target_is_an_error() {
        let mut tree = RootfsTree::new();
        let error = tree
            .insert_package(
                "p",
                vec![entry("usr/bin/b", EntryKind::Hardlink("usr/bin/a".into()))],
                &PathFilter::none(),
            )
            .unwrap_err();
        assert!(error.to_string().contains("p: usr/bin/b"), "{error}");
    }

    #[test]
    fn remove_is_recursive_and_exact() {
        let mut tree = RootfsTree::new();
        for path in ["etc/a/x", "etc/a/y/z", "etc/a-b", "etc/a.c"] {
            tree.add_file(path, b"1".to_vec(), 0o644, 0, 0).unwrap();
        }
        assert_eq!(tree.remove("etc/a").unwrap(), 4);
        let left: Vec<&str> = tree.iter_under("etc").map(|(p, _)| p).collect();
        assert_eq!(left, ["etc/a-b", "etc/a.c"]);
        assert_eq!(tree.remove("etc/nothing").unwrap(), 0);
    }

    #[test]
    fn iteration_is_sorted_with_parents_first_and_sizes_add_up() {
        let mut tree = RootfsTree::new();
        tree.add_file("a/b-c", b"12".to_vec(), 0o644, 0, 0).unwrap();
        tree.add_file("a/b/c", b"345".to_vec(), 0o644, 0, 0)
            .unwrap();
        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        for (i, path) in paths.iter().enumerate() {
            if let Some((parent, _)) = path.rsplit_once('/') {
                let at = paths.iter().position(|p| *p == parent).unwrap();
                assert!(at < i, "{parent} after {path}");
            }
        }
        assert_eq!(tree.total_size(), 5);
        assert_eq!(tree.len(), paths.len());
    }

    #[test]
    fn digest_is_order_independent_and_sensitive() {
        let mut one = RootfsTree::new();
        one.add_file("etc/a", b"1".to_vec(), 0o644, 0, 0).unwrap();
        one.add_file("etc/b", b"2".to_vec(), 0o644, 0, 0).unwrap();
        let mut two = RootfsTree::new();
        two.add_file("etc/b", b"2".to_vec(), 0o644, 0, 0).unwrap();
        two.add_file("etc/a", b"1".to_vec(), 0o644, 0, 0).unwrap();
        assert_eq!(one.digest(), two.digest());
        let mut three = two.clone();
        three.add_file("etc/a", b"1".to_vec(), 0o600, 0, 0).unwrap();
        assert_ne!(one.digest(), three.digest());
        let mut four = two.clone();
        four.add_file("etc/a", b"1".to_vec(), 0o644, 0, 1).unwrap();
        assert_ne!(one.digest(), four.digest());
        // Moving a byte between path and contents must change the digest.
        let mut five = RootfsTree::new();
        five.add_file("etc/a1", b"".to_vec(), 0o644, 0, 0).unwrap();
        let mut six = RootfsTree::new();
        six.add_file("etc/a", b"1".to_vec(), 0o644, 0, 0).unwrap();
        assert_ne!(five.digest(), six.digest());
    }

    #[test]
    fn bad_api_paths_are_rejected() {
        let mut tree = RootfsTree::new();
        assert!(tree.add_file("../x", b"".to_vec(), 0o644, 0, 0).is_err());
        assert!(tree.add_dir("/", 0o755, 0, 0).is_err());
    }
}
