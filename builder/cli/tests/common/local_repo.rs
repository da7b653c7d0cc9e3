//! A signed Debian archive on the local disk, reachable as a `file://` URL,
//! for tests that must not touch the network.
//!
//! [`LocalRepo::create`] writes real `.deb` files (ar archive with
//! `debian-binary`, `control.tar.xz`, `data.tar.xz`), the
//! `dists/<suite>/main/binary-amd64/Packages{,.xz}` index (also under
//! `by-hash/SHA256/`), the `main/source/Sources{,.xz}` index of the
//! [`FakeSource`]s given to [`LocalRepo::publish_with_sources`] (empty
//! otherwise), a `Release` with SHA256 lines, an `InRelease`
//! cleartext-signed with a freshly generated ed25519 key, and (beside the
//! archive) `keyring.gpg` holding that key's public half. Pass
//! [`LocalRepo::url`] as the mirror and [`LocalRepo::keyring`] as the
//! keyring. Tampering helpers: [`LocalRepo::corrupt_deb`],
//! [`LocalRepo::corrupt_source_file`],
//! [`LocalRepo::resign_with_other_key`], [`LocalRepo::set_release_field`];
//! [`LocalRepo::publish`] replaces the contents (same key).
//!
//! ```ignore
//! let dir = tempfile::tempdir().unwrap();
//! let repo = LocalRepo::create(dir.path(), "bookworm", &[
//!     FakePackage::new("busybox", "1:1.35.0-4").file("/bin/busybox", b"\x7fELF", 0o755),
//!     FakePackage::new("app", "1.0").depends("busybox (>= 1.30)").symlink("/usr/bin/sh", "busybox"),
//! ]);
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use pgp::composed::{
    CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
};
use pgp::ser::Serialize;
use pgp::types::Password;
use sha2::{Digest, Sha256};

/// Modification time of every archive member, so builds are reproducible.
const MTIME: u64 = 1_700_000_000;

/// One entry of a fake package's `data.tar.xz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeFile {
    /// A regular file.
    File {
        /// Absolute path in the installed system, e.g. `/usr/bin/tool`.
        path: String,
        /// File contents.
        contents: Vec<u8>,
        /// Permission bits, e.g. `0o755`.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Absolute path of the link.
        path: String,
        /// What it points to, as stored in the archive.
        target: String,
    },
}

/// A binary package to publish; parent folders of its files are added to
/// the archive automatically (mode 0755), as `dpkg-deb` would have them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakePackage {
    /// Package name.
    pub name: String,
    /// Version, optionally with an epoch (left out of the file name, as Debian does).
    pub version: String,
    /// `Depends` value; empty for none.
    pub depends: String,
    /// `Provides` value; empty for none.
    pub provides: String,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Source` value, e.g. `glibc (2.36-9)`; empty for none (the source
    /// package has the binary's name and version).
    pub source: String,
    /// The files of `data.tar.xz`.
    pub files: Vec<FakeFile>,
}

impl FakePackage {
    /// A package with no relations and no files.
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            ..Self::default()
        }
    }

    /// Sets `Depends`.
    pub fn depends(mut self, depends: &str) -> Self {
        self.depends = depends.to_string();
        self
    }

    /// Sets `Provides`.
    pub fn provides(mut self, provides: &str) -> Self {
        self.provides = provides.to_string();
        self
    }

    /// Sets `Source`, e.g. `glibc` or `glibc (2.36-9)` (a binNMU).
    pub fn source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }

    /// Marks the package `Essential: yes`.
    pub fn essential(mut self) -> Self {
        self.essential = true;
        self
    }

    /// Adds a regular file.
    pub fn file(mut self, path: &str, contents: &[u8], mode: u32) -> Self {
        self.files.push(FakeFile::File {
            path: path.to_string(),
            contents: contents.to_vec(),
            mode,
        });
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.files.push(FakeFile::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        });
        self
    }

    /// Path of the `.deb` below the archive root.
    fn pool_path(&self) -> String {
        let version = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        format!(
            "pool/main/{}/{}/{}_{}_amd64.deb",
            &self.name[..1],
            self.name,
            self.name,
            version
        )
    }
}

/// A source package to publish: a `.dsc` and the tarballs it lists, with
/// contents made from the name and version (so two versions of one
/// upstream release share their `.orig.tar.xz`, as in Debian). A version
/// with a Debian revision (`1.0-1`) gets `<name>_<upstream>.orig.tar.xz`
/// and `<name>_<version>.debian.tar.xz`, a native one (`1.0`)
/// `<name>_<version>.tar.xz`; file names leave the epoch out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSource {
    /// Source package name.
    pub name: String,
    /// Version, optionally with an epoch.
    pub version: String,
}

impl FakeSource {
    /// The source package `name` at `version`.
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
        }
    }

    /// Folder of its files below the archive root, e.g. `pool/main/g/glibc`.
    pub fn directory(&self) -> String {
        format!("pool/main/{}/{}", &self.name[..1], self.name)
    }

    /// Its files as (name, contents), the `.dsc` first.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let version = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        let tarball = |name: String, what: &str| {
            let contents = xz(format!("{what} of {name}\n").as_bytes());
            (name, contents)
        };
        let tarballs = match version.rsplit_once('-') {
            Some((upstream, _)) => vec![
                tarball(format!("{}_{upstream}.orig.tar.xz", self.name), "upstream"),
                tarball(format!("{}_{version}.debian.tar.xz", self.name), "debian"),
            ],
            None => vec![tarball(format!("{}_{version}.tar.xz", self.name), "native")],
        };
        let dsc = format!(
            "Format: 3.0 (quilt)\nSource: {}\nVersion: {}\nChecksums-Sha256:\n{}",
            self.name,
            self.version,
            checksum_lines(&tarballs)
        );
        let mut files = vec![(format!("{}_{version}.dsc", self.name), dsc.into_bytes())];
        files.extend(tarballs);
        files
    }

    /// Its stanza of the `Sources` index.
    fn stanza(&self) -> String {
        format!(
            "Package: {}\nBinary: {}\nVersion: {}\nMaintainer: Test <test@example.invalid>\n\
             Format: 3.0 (quilt)\nDirectory: {}\nChecksums-Sha256:\n{}\n",
            self.name,
            self.name,
            self.version,
            self.directory(),
            checksum_lines(&self.files())
        )
    }
}

/// ` <sha256> <size> <name>` lines, as `.dsc` and `Sources` list files.
fn checksum_lines(files: &[(String, Vec<u8>)]) -> String {
    files
        .iter()
        .map(|(name, data)| format!(" {} {} {name}\n", sha256(data), data.len()))
        .collect()
}

/// A published local archive; see the module documentation.
pub struct LocalRepo {
    /// Archive root folder (`dir/archive`), holding `dists/` and `pool/`.
    pub root: PathBuf,
    /// `file://` URL of [`LocalRepo::root`], to pass as the mirror.
    pub url: String,
    /// Binary keyring (`dir/keyring.gpg`, outside the archive) with the
    /// public key that signed `InRelease`.
    pub keyring: PathBuf,
    /// The suite (also used as codename).
    pub suite: String,
    key: SignedSecretKey,
}

impl LocalRepo {
    /// Generates a signing key, writes its public half to `dir/keyring.gpg`
    /// and publishes `packages` in the archive `dir/archive`.
    pub fn create(dir: &Path, suite: &str, packages: &[FakePackage]) -> LocalRepo {
        let key = generate_key("applbuild test archive <archive@example.invalid>");
        let keyring = dir.join("keyring.gpg");
        let mut public = Vec::new();
        SignedPublicKey::from(key.clone())
            .to_writer(&mut public)
            .expect("serialize public key");
        fs::create_dir_all(dir).expect("create repository folder");
        fs::write(&keyring, public).expect("write keyring");
        let root = dir.join("archive");
        let repo = LocalRepo {
            url: format!("file://{}", root.display()),
            root,
            keyring,
            suite: suite.to_string(),
            key,
        };
        repo.publish(packages);
        repo
    }

    /// Another suite of the same archive (same root, same signing key),
    /// publishing `packages` under `dists/<suite>/`.
    pub fn sibling_suite(&self, suite: &str, packages: &[FakePackage]) -> LocalRepo {
        let sibling = LocalRepo {
            root: self.root.clone(),
            url: self.url.clone(),
            keyring: self.keyring.clone(),
            suite: suite.to_string(),
            key: self.key.clone(),
        };
        sibling.publish(packages);
        sibling
    }

    /// Replaces the archive's contents with `packages` (new `.deb` files,
    /// indexes, Release, InRelease), signed with the same key; old pool
    /// files stay, as on a real mirror. The `Sources` index is empty.
    pub fn publish(&self, packages: &[FakePackage]) {
        self.publish_with_sources(packages, &[]);
    }

    /// [`LocalRepo::publish`], with `sources` in the `Sources` index and
    /// their files in the pool.
    pub fn publish_with_sources(&self, packages: &[FakePackage], sources: &[FakeSource]) {
        let mut index = String::new();
        for package in packages {
            let deb = build_deb(package);
            let pool_path = package.pool_path();
            write_file(&self.root.join(&pool_path), &deb);
            index.push_str(&packages_stanza(package, &pool_path, &deb));
        }
        let mut source_index = String::new();
        for source in sources {
            for (name, data) in source.files() {
                write_file(&self.root.join(source.directory()).join(name), &data);
            }
            source_index.push_str(&source.stanza());
        }

        let dists = self.root.join("dists").join(&self.suite);
        let sha_lines = [
            write_index(&dists, "main/binary-amd64/Packages", &index),
            write_index(&dists, "main/source/Sources", &source_index),
        ]
        .concat();
        let release = format!(
            "Origin: applbuild-test\nLabel: applbuild-test\nSuite: {suite}\nCodename: {suite}\n\
             Date: {date}\nAcquire-By-Hash: yes\nArchitectures: amd64\nComponents: main\n\
             Description: local test archive\nSHA256:\n{sha_lines}",
            suite = self.suite,
            date = applbuild_deb::release::format_date(std::time::SystemTime::now()),
        );
        write_file(&dists.join("Release"), release.as_bytes());
        self.sign_release(&self.key);
    }

    /// Path of a published source package file, e.g. `glibc_2.36.orig.tar.xz`
    /// (in the pool folder of the source package its name starts with).
    pub fn source_file_path(&self, file: &str) -> PathBuf {
        let package = file.split('_').next().expect("file name");
        self.root
            .join(FakeSource::new(package, "0").directory())
            .join(file)
    }

    /// Changes one byte in the middle of a published source package file,
    /// keeping its size and leaving the `Sources` index as it is.
    pub fn corrupt_source_file(&self, file: &str) {
        let path = self.source_file_path(file);
        let mut data = fs::read(&path).expect("read source file");
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
        fs::write(&path, data).expect("write source file");
    }

    /// Path of `name`'s `.deb` in the pool (the first one published under that name).
    pub fn deb_path(&self, name: &str) -> PathBuf {
        let index = fs::read_to_string(
            self.root
                .join("dists")
                .join(&self.suite)
                .join("main/binary-amd64/Packages"),
        )
        .expect("read Packages");
        let stanza = index
            .split("\n\n")
            .find(|stanza| stanza.lines().next() == Some(&format!("Package: {name}")))
            .unwrap_or_else(|| panic!("no package {name} in the local repository"));
        let filename = stanza
            .lines()
            .find_map(|line| line.strip_prefix("Filename: "))
            .expect("Filename field");
        self.root.join(filename)
    }

    /// Changes one byte in the middle of `name`'s `.deb`, keeping its size
    /// and leaving the index as it is: a download must fail its SHA256 check.
    pub fn corrupt_deb(&self, name: &str) {
        let path = self.deb_path(name);
        let mut data = fs::read(&path).expect("read .deb");
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
        fs::write(&path, data).expect("write .deb");
    }

    /// Sets `field` of the Release file to `value` (replacing it or adding
    /// it before `SHA256`) and re-signs `InRelease` with the archive key,
    /// e.g. to publish a `Valid-Until` in the past.
    pub fn set_release_field(&self, field: &str, value: &str) {
        let path = self.root.join("dists").join(&self.suite).join("Release");
        let release = fs::read_to_string(&path).expect("read Release");
        let prefix = format!("{field}: ");
        let mut lines: Vec<String> = release
            .lines()
            .filter(|line| !line.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        let at = lines
            .iter()
            .position(|line| line == "SHA256:")
            .expect("SHA256 field");
        lines.insert(at, format!("{prefix}{value}"));
        write_file(&path, format!("{}\n", lines.join("\n")).as_bytes());
        self.sign_release(&self.key);
    }

    /// Re-signs `InRelease` with a new key that is not in [`LocalRepo::keyring`].
    pub fn resign_with_other_key(&self) {
        self.sign_release(&generate_key("impostor <impostor@example.invalid>"));
    }

    fn sign_release(&self, key: &SignedSecretKey) {
        let dists = self.root.join("dists").join(&self.suite);
        let release = fs::read_to_string(dists.join("Release")).expect("read Release");
        let message = CleartextSignedMessage::sign(
            rand::thread_rng(),
            &release,
            &key.primary_key,
            &Password::empty(),
        )
        .expect("sign Release");
        let armored = message
            .to_armored_string(Default::default())
            .expect("armor InRelease");
        write_file(&dists.join("InRelease"), armored.as_bytes());
    }
}

fn generate_key(user_id: &str) -> SignedSecretKey {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id(user_id.into());
    params
        .build()
        .expect("key parameters")
        .generate(rand::thread_rng())
        .expect("generate key")
}

fn write_file(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().expect("file has a parent")).expect("create folder");
    fs::write(path, data).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The `Packages` stanza of `package`, whose `.deb` is `deb` at `pool_path`.
fn packages_stanza(package: &FakePackage, pool_path: &str, deb: &[u8]) -> String {
    let mut stanza = format!(
        "Package: {}\nVersion: {}\nArchitecture: amd64\n",
        package.name, package.version
    );
    if package.essential {
        stanza.push_str("Essential: yes\n");
    }
    stanza.push_str(
        "Priority: optional\nSection: misc\nInstalled-Size: 1\nMaintainer: Test <test@example.invalid>\n",
    );
    for (field, value) in [
        ("Source", &package.source),
        ("Depends", &package.depends),
        ("Provides", &package.provides),
    ] {
        if !value.is_empty() {
            stanza.push_str(&format!("{field}: {value}\n"));
        }
    }
    stanza.push_str(&format!(
        "Filename: {pool_path}\nSize: {}\nSHA256: {}\nDescription: test package {}\n\n",
        deb.len(),
        sha256(deb),
        package.name
    ));
    stanza
}

/// Writes the index `text` as `dists/<suite>/<path>` and `<path>.xz` (each
/// also under `by-hash/SHA256/`) and returns their Release SHA256 lines.
fn write_index(dists: &Path, path: &str, text: &str) -> String {
    let (folder, name) = path.rsplit_once('/').expect("index path has a folder");
    let compressed = xz(text.as_bytes());
    let mut sha_lines = String::new();
    for (file, data) in [
        (name.to_string(), text.as_bytes()),
        (format!("{name}.xz"), compressed.as_slice()),
    ] {
        let dir = dists.join(folder);
        write_file(&dir.join(&file), data);
        write_file(&dir.join("by-hash/SHA256").join(sha256(data)), data);
        sha_lines.push_str(&format!(
            " {} {:>8} {folder}/{file}\n",
            sha256(data),
            data.len()
        ));
    }
    sha_lines
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
    encoder.write_all(data).expect("xz compress");
    encoder.finish().expect("xz finish")
}

fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header
}

/// `data.tar.xz` as dpkg-deb writes it: `./`-relative names, folders first.
fn data_tar(files: &[FakeFile]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut folders = std::collections::BTreeSet::new();
    for file in files {
        let path = match file {
            FakeFile::File { path, .. } | FakeFile::Symlink { path, .. } => path,
        };
        let mut parent = Path::new(path.trim_start_matches('/')).parent();
        while let Some(folder) = parent.filter(|p| !p.as_os_str().is_empty()) {
            folders.insert(folder.to_path_buf());
            parent = folder.parent();
        }
    }
    let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
    builder
        .append_data(&mut header, "./", std::io::empty())
        .expect("tar ./");
    for folder in &folders {
        let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
        builder
            .append_data(
                &mut header,
                format!("./{}/", folder.display()),
                std::io::empty(),
            )
            .expect("tar folder");
    }
    for file in files {
        match file {
            FakeFile::File {
                path,
                contents,
                mode,
            } => {
                let mut header = tar_header(tar::EntryType::Regular, *mode, contents.len() as u64);
                builder
                    .append_data(&mut header, format!(".{path}"), contents.as_slice())
                    .expect("tar file");
            }
            FakeFile::Symlink { path, target } => {
                let mut header = tar_header(tar::EntryType::Symlink, 0o777, 0);
                builder
                    .append_link(&mut header, format!(".{path}"), target)
                    .expect("tar symlink");
            }
        }
    }
    xz(&builder.into_inner().expect("finish data.tar"))
}

fn control_tar(package: &FakePackage) -> Vec<u8> {
    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: amd64\nMaintainer: Test <test@example.invalid>\nInstalled-Size: 1\n",
        package.name, package.version
    );
    if package.essential {
        control.push_str("Essential: yes\n");
    }
    for (field, value) in [
        ("Source", &package.source),
        ("Depends", &package.depends),
        ("Provides", &package.provides),
    ] {
        if !value.is_empty() {
            control.push_str(&format!("{field}: {value}\n"));
        }
    }
    control.push_str(&format!("Description: test package {}\n", package.name));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
    builder
        .append_data(&mut header, "./", std::io::empty())
        .expect("tar ./");
    let mut header = tar_header(tar::EntryType::Regular, 0o644, control.len() as u64);
    builder
        .append_data(&mut header, "./control", control.as_bytes())
        .expect("tar control");
    xz(&builder.into_inner().expect("finish control.tar"))
}

fn build_deb(package: &FakePackage) -> Vec<u8> {
    let mut builder = ar::Builder::new(Vec::new());
    let members = [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.xz", control_tar(package)),
        ("data.tar.xz", data_tar(&package.files)),
    ];
    for (name, data) in members {
        let mut header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        header.set_mode(0o100644);
        header.set_mtime(MTIME);
        builder.append(&header, data.as_slice()).expect("ar member");
    }
    builder.into_inner().expect("finish .deb")
}
