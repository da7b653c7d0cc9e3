//! Both SBOM documents of a small sample pass the formats' own validators
//! (`scripts/sbom-validate`: pyspdxtools and CycloneDX 1.6 JSON schema).

use std::path::Path;
use std::process::Command;

use applbuild_image::sbom::{SbomArtifact, SbomInput, SbomPackage, write_sbom};
use applbuild_rootfs::copyright::{Copyright, parse_licence};

const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
    Files: *\nCopyright: 2007 Karel Zak\nLicense: GPL-2+\n\n\
    Files: lib/md5.c\nCopyright: none\nLicense: public-domain\n This code is in the public domain.\n\n\
    Files: libuuid/*\nCopyright: 1996 Theodore Ts'o\nLicense: BSD-3-clause or Expat\n";

fn package(name: &str, source: &str, depends_on: &[&str], copyright: Option<&str>) -> SbomPackage {
    SbomPackage {
        name: name.to_owned(),
        version: "2.38.1-5+deb12u3".to_owned(),
        architecture: "amd64".to_owned(),
        deb_sha256: "3a2118df47bf3f04285649f0455c2fc6fe2dc7f0b237073038aa00af41f0d5f2".to_owned(),
        source_name: source.to_owned(),
        source_version: "2.38.1-5+deb12u3".to_owned(),
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        copyright: Copyright {
            licence: parse_licence(copyright.unwrap_or("free text, not DEP-5\n")),
            sha256: copyright.map(|_| "ab".repeat(32)),
        },
    }
}

#[test]
fn documents_pass_the_format_validators() {
    let input = SbomInput {
        profile: "storage".to_owned(),
        distro: "debian-12".to_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        created: 1_700_000_000,
        packages: vec![
            package("libuuid1", "util-linux", &["libc6"], Some(DEP5)),
            package("libc6", "glibc", &[], None),
            package("libstdc++6", "gcc-12", &["libc6"], Some(DEP5)),
        ],
        artifacts: vec![
            SbomArtifact {
                file: "initramfs.img".to_owned(),
                sha256: "cd".repeat(32),
                generated_from: vec!["libc6".to_owned(), "libuuid1".to_owned()],
            },
            SbomArtifact {
                file: "disk.img".to_owned(),
                sha256: "ef".repeat(32),
                generated_from: vec!["initramfs.img".to_owned()],
            },
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let [spdx, cdx, _] = write_sbom(&input, dir.path()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sbom-validate");
    let output = Command::new(&script)
        .args([&spdx, &cdx])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "scripts/sbom-validate failed (run it by hand to set up the validators; under CI=true it must work):\n{log}"
    );
    assert_eq!(log.matches("is valid").count(), 2, "{log}");
}
