//! Reads `rootfs-overlay/common/` and `rootfs-overlay/<profile>/`: plain
//! files are copied, `*.j2` files are rendered and lose the suffix. Owners are
//! always root and modes come from the source's permission bits, so the image
//! does not depend on who checked the repository out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::templates::{Renderer, TemplateError};

/// What can go wrong while reading an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A file or folder could not be read.
    #[error("cannot read overlay {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A template failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Something other than a file, folder or symlink.
    #[error("overlay {0} is neither a file, a folder nor a symlink")]
    Unsupported(PathBuf),
}

/// One item to place in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayItem {
    /// Path inside the image, relative (no leading `/`).
    pub path: String,
    /// What to place there.
    pub kind: OverlayKind,
    /// Overlay file it came from (for the manifest and errors).
    pub source: PathBuf,
}

/// The kind of an overlay item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayKind {
    /// A regular file with its permission bits.
    File {
        /// Contents (rendered for templates).
        contents: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A folder with its permission bits.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Link target as stored.
        target: String,
    },
}

/// Reads every layer in order (later layers win), rendering templates.
pub fn read_layers(
    layers: &[PathBuf],
    renderer: &Renderer,
) -> Result<Vec<OverlayItem>, OverlayError> {
    let mut items = Vec::new();
    for layer in layers {
        if layer.is_dir() {
            walk(layer, layer, renderer, &mut items)?;
        }
    }
    Ok(items)
}

fn walk(
    root: &Path,
    dir: &Path,
    renderer: &Renderer,
    items: &mut Vec<OverlayItem>,
) -> Result<(), OverlayError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OverlayError::Read { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_error(dir))?
        .collect::<Result<_, _>>()
        .map_err(read_error(dir))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let metadata = std::fs::symlink_metadata(&path).map_err(read_error(&path))?;
        let relative = path
            .strip_prefix(root)
            .expect("walked paths are below the root")
            .to_string_lossy()
            .into_owned();
        let mode = metadata.permissions().mode() & 0o7777;
        let kind = if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(read_error(&path))?;
            OverlayKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else if metadata.is_dir() {
            items.push(OverlayItem {
                path: relative,
                kind: OverlayKind::Dir {
                    mode: normalized(mode, true),
                },
                source: path.clone(),
            });
            walk(root, &path, renderer, items)?;
            continue;
        } else if metadata.is_file() {
            let contents = std::fs::read(&path).map_err(read_error(&path))?;
            if let Some(stripped) = relative.strip_suffix(".j2") {
                let source = String::from_utf8_lossy(&contents);
                let rendered = renderer.render(&path.display().to_string(), &source)?;
                items.push(OverlayItem {
                    path: stripped.to_string(),
                    kind: OverlayKind::File {
                        contents: rendered.into_bytes(),
                        mode: normalized(mode, false),
                    },
                    source: path,
                });
                continue;
            }
            OverlayKind::File {
                contents,
                mode: normalized(mode, false),
            }
        } else {
            return Err(OverlayError::Unsupported(path));
        };
        items.push(OverlayItem {
            path: relative,
            kind,
            source: path,
        });
    }
    Ok(())
}

/// Makes every file whose contents hold one of `secrets` private to root:
/// mode 0600 (0700 when it is executable), so a rendered configuration
/// file with a CHAP secret is not readable by other users of the image.
/// Empty secrets are ignored. Returns the paths made private.
pub fn restrict_private(items: &mut [OverlayItem], secrets: &[&str]) -> Vec<String> {
    let mut private = Vec::new();
    for item in items {
        let OverlayKind::File { contents, mode } = &mut item.kind else {
            continue;
        };
        let holds = |secret: &&str| {
            !secret.is_empty()
                && contents
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes())
        };
        if secrets.iter().any(holds) {
            *mode &= 0o700;
            private.push(item.path.clone());
        }
    }
    private
}

/// Checkouts differ in umask; git keeps only the executable bit, so do we.
fn normalized(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_holding_a_secret_become_private() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("storage");
        std::fs::create_dir_all(layer.join("etc/tgt")).unwrap();
        std::fs::write(
            layer.join("etc/tgt/targets.conf.j2"),
            "incominguser {{ user }} {{ secret }}\n",
        )
        .unwrap();
        std::fs::write(layer.join("etc/motd.j2"), "hello {{ user }}\n").unwrap();
        std::fs::write(layer.join("tool"), "#!/bin/sh\necho s3cr3t-value-123\n").unwrap();
        std::fs::set_permissions(layer.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let renderer = Renderer::new(&json!({ "user": "uranus", "secret": "s3cr3t-value-123" }));
        let mut items = read_layers(&[layer], &renderer).unwrap();

        let private = restrict_private(&mut items, &["s3cr3t-value-123", ""]);
        assert_eq!(private, ["etc/tgt/targets.conf", "tool"]);
        let mode_of = |path: &str| {
            items
                .iter()
                .find(|item| item.path == path)
                .and_then(|item| match item.kind {
                    OverlayKind::File { mode, .. } => Some(mode),
                    _ => None,
                })
        };
        assert_eq!(mode_of("etc/tgt/targets.conf"), Some(0o600));
        assert_eq!(mode_of("tool"), Some(0o700));
        assert_eq!(mode_of("etc/motd"), Some(0o644));
    }

    #[test]
    fn renders_templates_and_later_layers_follow_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let common = dir.path().join("common");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(common.join("etc")).unwrap();
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(common.join("etc/hostname.j2"), "{{ hostname }}\n").unwrap();
        std::fs::write(common.join("etc/static"), "x").unwrap();
        std::fs::write(storage.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(storage.join("tool"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::symlink("usr/bin/busybox", storage.join("init")).unwrap();

        let renderer = Renderer::new(&json!({"hostname": "neptune"}));
        let items = read_layers(&[common, storage, dir.path().join("absent")], &renderer).unwrap();
        let paths: Vec<&str> = items.iter().map(|item| item.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/hostname", "etc/static", "init", "tool"]);
        assert_eq!(
            items[1].kind,
            OverlayKind::File {
                contents: b"neptune\n".to_vec(),
                mode: 0o644
            }
        );
        assert_eq!(
            items[3].kind,
            OverlayKind::Symlink {
                target: "usr/bin/busybox".into()
            }
        );
        assert_eq!(
            items[4].kind,
            OverlayKind::File {
                contents: b"#!/bin/sh\n".to_vec(),
                mode: 0o755
            }
        );
    }

    #[test]
    fn template_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.conf.j2"), "ok\n{{ missing.value }}\n").unwrap();
        let error =
            read_layers(&[dir.path().to_path_buf()], &Renderer::new(&json!({}))).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("bad.conf.j2:2"), "{message}");
    }
}
