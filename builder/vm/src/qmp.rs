//! QEMU Machine Protocol client over a unix socket: pulls and replugs virtual
//! cables (`set_link`), quits, and keeps the asynchronous events it sees.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket never accepted a connection.
    #[error("QMP socket {path} did not accept a connection within {waited:?}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// How long we tried.
        waited: Duration,
        /// Last error.
        source: std::io::Error,
    },
    /// Reading or writing failed (QEMU exited, timeout).
    #[error("QMP {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU answered with an error.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        /// Command executed.
        command: String,
        /// QMP error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A line was not JSON.
    #[error("QMP {path}: unreadable reply {line:?}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// The line.
        line: String,
    },
}

/// A connected QMP session in command mode.
pub struct QmpClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl QmpClient {
    /// Connects (retrying until `wait` has passed, as QEMU may still be
    /// creating the socket), reads the greeting and enters command mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self, QmpError> {
        let stream = connect_with_retry(path, wait).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            waited: wait,
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut client = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        client.read_message()?;
        client.execute("qmp_capabilities", json!({}))?;
        Ok(client)
    }

    /// Runs a command and returns its `return` value; events that arrive
    /// before the reply are kept (see [`QmpClient::take_events`]).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let request = json!({"execute": command, "arguments": arguments});
        let mut line = serde_json::to_vec(&request).expect("JSON values serialize");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let message = self.read_message()?;
            if message.get("event").is_some() {
                self.events.push(message);
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.into(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
        }
    }

    /// Pulls (`up == false`) or replugs the virtual cable of a NIC or netdev.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        self.execute("set_link", json!({"name": name, "up": up}))
            .map(|_| ())
    }

    /// Asks QEMU to exit at once.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", json!({})) {
            Ok(_) => Ok(()),
            // QEMU may close the socket before the reply arrives.
            Err(QmpError::Io { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Events received so far, oldest first; the list is emptied.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the socket",
                ),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            line: line.trim_end().to_string(),
        })
    }
}

/// Connects to a unix socket, retrying while it does not exist or refuses.
pub fn connect_with_retry(path: &Path, wait: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP peer: greeting, capabilities, one event, then a reply.
    #[test]
    fn set_link_sends_command_and_keeps_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            writeln!(
                writer,
                r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#
            )
            .unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writeln!(writer, r#"{{"return": {{}}}}"#).unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            let request: Value = serde_json::from_str(&line).unwrap();
            writeln!(
                writer,
                r#"{{"event": "NIC_RX_FILTER_CHANGED", "data": {{}}}}"#
            )
            .unwrap();
            writeln!(writer, r#"{{"return": {{}}}}"#).unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            writeln!(
                writer,
                r#"{{"error": {{"class": "DeviceNotFound", "desc": "no nic9"}}}}"#
            )
            .unwrap();
            request
        });
        let mut client = QmpClient::connect(&path, Duration::from_secs(5)).unwrap();
        client.set_link("san-a", false).unwrap();
        let error = client.set_link("nic9", true).unwrap_err().to_string();
        let request = server.join().unwrap();
        assert_eq!(request["execute"], "set_link");
        assert_eq!(request["arguments"], json!({"name": "san-a", "up": false}));
        assert_eq!(client.take_events().len(), 1);
        assert!(error.contains("DeviceNotFound: no nic9"), "{error}");
    }

    #[test]
    fn connect_gives_up_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let error = QmpClient::connect(&dir.path().join("none"), Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("did not accept a connection"),
            "{error}"
        );
    }
}
