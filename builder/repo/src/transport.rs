//! Fetches a URL (`http://`, `https://`, `file://`) into a file or memory.
//!
//! Callers verify what arrives (size, SHA256, signature); this module only
//! moves bytes, retries transient failures and reports progress. A retry
//! starts the download over, so the destination must be rewindable: a file
//! (truncated) or a `Vec` (cleared).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use applbuild_progress::Task;

/// How often a download is tried before its error is returned; mirrors drop
/// connections now and then, and one retry hides most of that.
const ATTEMPTS: u32 = 3;
/// Give up on a host that does not accept a connection within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Give up on a connection that stalls: no response or no body data for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a fetch failed; every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A small file (InRelease) is larger than its bound; reading stopped
    /// one byte past it.
    #[error("{url}: more than the expected {limit} bytes; refused")]
    TooLarge {
        /// The URL.
        url: String,
        /// The most bytes accepted.
        limit: u64,
    },
    /// The server answered with a status other than 200.
    #[error("{url}: HTTP status {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// A `file://` URL names no file.
    #[error("{url}: no such file ({})", path.display())]
    MissingFile {
        /// The URL requested.
        url: String,
        /// The local path it maps to.
        path: PathBuf,
    },
    /// The connection failed or broke off, also after retrying.
    #[error("{url}: {source} (after {attempts} attempts)")]
    Connection {
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        #[source]
        source: ureq::Error,
    },
    /// Reading a `file://` URL or writing the destination failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL requested.
        url: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The scheme is not one of `http`, `https`, `file`.
    #[error("{url}: unsupported URL scheme (use http://, https:// or file://)")]
    UnsupportedScheme {
        /// The URL requested.
        url: String,
    },
}

impl TransportError {
    /// Whether the server or file system says the resource does not exist,
    /// so a caller with an alternative path (by-hash vs. plain, `.xz` vs.
    /// `.gz`) can try that instead of failing.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            TransportError::MissingFile { .. }
                | TransportError::Status {
                    status: 404 | 410,
                    ..
                }
        )
    }
}

/// A destination that can be emptied so a failed attempt leaves no partial
/// data in front of the retry's.
pub trait Sink: Write {
    /// Discards everything written so far.
    fn restart(&mut self) -> io::Result<()>;
}

impl Sink for File {
    fn restart(&mut self) -> io::Result<()> {
        self.set_len(0)?;
        self.rewind()
    }
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// One HTTP agent (connection pool, timeouts) shared by all downloads of a build.
#[derive(Clone)]
pub struct Transport {
    agent: ureq::Agent,
}

impl Default for Transport {
    fn default() -> Self {
        Self::new()
    }
}

/// How a failed attempt ended, to decide whether to try again.
enum Attempt {
    Retry(ureq::Error),
    Fatal(TransportError),
}

impl Transport {
    /// A transport with connect and stall timeouts; no overall timeout, since
    /// a large package on a slow link may legitimately take minutes.
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("applbuild/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
        }
    }

    /// Downloads `url` into `sink`, advancing `task` by the bytes received,
    /// and returns the number of bytes written. Connection failures, broken
    /// transfers and 5xx answers are retried with the sink emptied first.
    /// At most `limit` + 1 bytes are read, so a server cannot fill the
    /// disk; the caller compares the size with what it expected.
    pub fn fetch(
        &self,
        url: &str,
        sink: &mut impl Sink,
        task: &Task,
        limit: u64,
    ) -> Result<u64, TransportError> {
        if let Some(rest) = url.strip_prefix("file://") {
            return fetch_file(url, rest, sink, task, limit);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(TransportError::UnsupportedScheme {
                url: url.to_string(),
            });
        }
        let mut attempt = 1;
        loop {
            match self.fetch_http_once(url, sink, task, limit) {
                Ok(written) => return Ok(written),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Retry(source)) if attempt >= ATTEMPTS => {
                    return Err(TransportError::Connection {
                        url: url.to_string(),
                        attempts: attempt,
                        source,
                    });
                }
                Err(Attempt::Retry(_)) => {
                    sink.restart().map_err(|source| TransportError::Io {
                        url: url.to_string(),
                        source,
                    })?;
                    thread::sleep(Duration::from_secs(u64::from(attempt)));
                    attempt += 1;
                }
            }
        }
    }

    /// Downloads `url` into memory; for small files (InRelease), at most `limit` bytes.
    pub fn fetch_bytes(
        &self,
        url: &str,
        task: &Task,
        limit: u64,
    ) -> Result<Vec<u8>, TransportError> {
        let mut buffer = Vec::new();
        if self.fetch(url, &mut buffer, task, limit)? > limit {
            return Err(TransportError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        Ok(buffer)
    }

    fn fetch_http_once(
        &self,
        url: &str,
        sink: &mut impl Sink,
        task: &Task,
        limit: u64,
    ) -> Result<u64, Attempt> {
        let response = match self.agent.get(url).call() {
            Ok(response) => response,
            Err(error) if is_transient(&error) => return Err(Attempt::Retry(error)),
            Err(source) => {
                return Err(Attempt::Fatal(TransportError::Connection {
                    url: url.to_string(),
                    attempts: 1,
                    source,
                }));
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            if status >= 500 {
                return Err(Attempt::Retry(ureq::Error::StatusCode(status)));
            }
            return Err(Attempt::Fatal(TransportError::Status {
                url: url.to_string(),
                status,
            }));
        }
        let mut reader = response.into_body().into_reader().take(limit + 1);
        copy_with_progress(&mut reader, sink, task).map_err(|failure| match failure {
            CopyFailure::Read(error) => Attempt::Retry(ureq::Error::Io(error)),
            CopyFailure::Write(source) => Attempt::Fatal(TransportError::Io {
                url: url.to_string(),
                source,
            }),
        })
    }
}

/// Failures worth another attempt: the network, not the request.
fn is_transient(error: &ureq::Error) -> bool {
    matches!(
        error,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// Which side of a copy failed: a broken download is retried, a full disk is not.
enum CopyFailure {
    Read(io::Error),
    Write(io::Error),
}

fn copy_with_progress(
    reader: &mut impl Read,
    sink: &mut impl Write,
    task: &Task,
) -> Result<u64, CopyFailure> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(written),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CopyFailure::Read(error)),
        };
        sink.write_all(&buffer[..n]).map_err(CopyFailure::Write)?;
        written += n as u64;
        task.inc(n as u64);
    }
}

fn fetch_file(
    url: &str,
    rest: &str,
    sink: &mut impl Sink,
    task: &Task,
    limit: u64,
) -> Result<u64, TransportError> {
    let path = file_url_path(rest);
    let io_error = |source| TransportError::Io {
        url: url.to_string(),
        source,
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(TransportError::MissingFile {
                url: url.to_string(),
                path,
            });
        }
        Err(error) => return Err(io_error(error)),
    };
    copy_with_progress(&mut (&mut file).take(limit + 1), sink, task).map_err(
        |failure| match failure {
            CopyFailure::Read(error) | CopyFailure::Write(error) => io_error(error),
        },
    )
}

/// Maps the part after `file://` to a path: an optional `localhost` host, then
/// an absolute path with `%XX` escapes decoded.
fn file_url_path(rest: &str) -> PathBuf {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use applbuild_progress::{Reporter, Unit};

    fn task() -> Task {
        Reporter::hidden().bar("test", 0, Unit::Bytes)
    }

    #[test]
    fn file_urls_are_read_and_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b.txt");
        std::fs::write(&path, b"hello").unwrap();
        let url = format!("file://{}", dir.path().join("a%20b.txt").display());
        let transport = Transport::new();
        assert_eq!(transport.fetch_bytes(&url, &task(), 5).unwrap(), b"hello");

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"stale data that must go").unwrap();
        file.restart().unwrap();
        assert_eq!(transport.fetch(&url, &mut file, &task(), 5).unwrap(), 5);
        assert_eq!(file.metadata().unwrap().len(), 5);
    }

    #[test]
    fn more_than_the_limit_is_refused_after_limit_plus_one_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 1000]).unwrap();
        let url = format!("file://{}", path.display());
        let mut sink = Vec::new();
        let transport = Transport::new();
        assert_eq!(transport.fetch(&url, &mut sink, &task(), 10).unwrap(), 11);
        assert_eq!(sink.len(), 11);
        let error = transport.fetch_bytes(&url, &task(), 10).unwrap_err();
        assert!(
            matches!(error, TransportError::TooLarge { limit: 10, .. }),
            "{error}"
        );
    }

    #[test]
    fn localhost_host_is_accepted() {
        assert_eq!(
            file_url_path("localhost/srv/x%2"),
            PathBuf::from("/srv/x%2")
        );
        assert_eq!(file_url_path("/srv/%41"), PathBuf::from("/srv/A"));
    }

    #[test]
    fn missing_file_is_not_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nothing", dir.path().display());
        let error = Transport::new()
            .fetch_bytes(&url, &task(), 1 << 20)
            .unwrap_err();
        assert!(error.is_not_found());
        assert!(error.to_string().contains(&url), "{error}");
    }

    #[test]
    fn unknown_scheme_is_rejected() {
        let error = Transport::new()
            .fetch_bytes("ftp://mirror.invalid/debian", &task(), 1 << 20)
            .unwrap_err();
        assert!(matches!(error, TransportError::UnsupportedScheme { .. }));
        assert!(!error.is_not_found());
        assert!(error.to_string().contains("ftp://mirror.invalid/debian"));
    }

    #[test]
    fn status_errors_name_url_and_status() {
        let error = TransportError::Status {
            url: "http://mirror.invalid/x".into(),
            status: 404,
        };
        assert!(error.is_not_found());
        assert_eq!(
            error.to_string(),
            "http://mirror.invalid/x: HTTP status 404"
        );
        let error = TransportError::Status {
            url: "http://mirror.invalid/x".into(),
            status: 403,
        };
        assert!(!error.is_not_found());
    }
}
