//! QEMU guest agent client: runs a command in the guest and returns its exit
//! code, standard output and standard error, with a deadline per command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// What can go wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    /// The socket could not be opened.
    #[error("guest agent socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent did not answer `guest-sync` before the deadline.
    #[error("guest agent on {path} did not answer within {waited:?}")]
    NotResponding {
        /// Socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// Reading or writing failed.
    #[error("guest agent {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent returned an error.
    #[error("guest agent command `{command}` failed: {desc}")]
    Command {
        /// Command.
        command: String,
        /// The agent's description.
        desc: String,
    },
    /// The command in the guest did not finish in time.
    #[error("`{command}` did not finish in the guest within {timeout:?}")]
    Timeout {
        /// The shell command.
        command: String,
        /// Its deadline.
        timeout: Duration,
    },
}

/// What a command run in the guest did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutput {
    /// Exit code (or 128 + signal number).
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ExecOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// A synchronised connection to one guest's agent.
pub struct QgaClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl QgaClient {
    /// Connects and synchronises (`guest-sync` with a fresh id), retrying
    /// until `wait` has passed: the agent starts late in the guest's boot.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self, QgaError> {
        let deadline = Instant::now() + wait;
        let stream = connect_with_retry(path, wait).map_err(|source| QgaError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let io = |source| QgaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let writer = stream.try_clone().map_err(io)?;
        let mut client = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        let mut id: u64 = std::process::id().into();
        loop {
            id += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QgaError::NotResponding {
                    path: path.to_path_buf(),
                    waited: wait,
                });
            }
            let attempt = left.min(Duration::from_secs(2));
            if client.sync(id, attempt)? {
                return Ok(client);
            }
        }
    }

    /// One `guest-sync` round; true once the agent echoes `id`.
    fn sync(&mut self, id: u64, wait: Duration) -> Result<bool, QgaError> {
        // 0xFF makes a half-read request from an earlier client fail to parse.
        self.send_raw(b"\xff")?;
        self.send(&json!({"execute": "guest-sync", "arguments": {"id": id}}))?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            match self.read_message(timeout) {
                Ok(Some(reply)) if reply.get("return").and_then(Value::as_u64) == Some(id) => {
                    return Ok(true);
                }
                Ok(_) => continue,
                Err(QgaError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }

    /// Runs `command` with `/bin/sh -c` in the guest and waits for it.
    pub fn exec_shell(&mut self, command: &str, timeout: Duration) -> Result<ExecOutput, QgaError> {
        self.exec("/bin/sh", &["-c", command], command, timeout)
    }

    /// Runs `path` with `args` in the guest and waits for it; `label` names
    /// the command in a timeout error.
    fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        label: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, QgaError> {
        let started = self.request(
            "guest-exec",
            json!({"path": path, "arg": args, "capture-output": true}),
        )?;
        let pid = started
            .get("pid")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let status = self.request("guest-exec-status", json!({"pid": pid}))?;
            if status.get("exited").and_then(Value::as_bool) == Some(true) {
                let text = |key: &str| {
                    status
                        .get(key)
                        .and_then(Value::as_str)
                        .and_then(|data| {
                            base64::engine::general_purpose::STANDARD.decode(data).ok()
                        })
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_default()
                };
                let exit_code = match status.get("exitcode").and_then(Value::as_i64) {
                    Some(code) => code as i32,
                    None => 128 + status.get("signal").and_then(Value::as_i64).unwrap_or(0) as i32,
                };
                return Ok(ExecOutput {
                    exit_code,
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                });
            }
            if Instant::now() >= deadline {
                return Err(QgaError::Timeout {
                    command: label.into(),
                    timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn request(&mut self, command: &str, arguments: Value) -> Result<Value, QgaError> {
        self.send(&json!({"execute": command, "arguments": arguments}))?;
        loop {
            let Some(reply) = self.read_message(Duration::from_secs(60))? else {
                continue;
            };
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(QgaError::Command {
                    command: command.into(),
                    desc: error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                });
            }
        }
    }

    fn send(&mut self, message: &Value) -> Result<(), QgaError> {
        let mut line = serde_json::to_vec(message).expect("JSON values serialize");
        line.push(b'\n');
        self.send_raw(&line)
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), QgaError> {
        self.writer.write_all(bytes).map_err(|source| QgaError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Next JSON line; `None` for a line that is not JSON (sync noise).
    fn read_message(&mut self, timeout: Duration) -> Result<Option<Value>, QgaError> {
        let io = |source| QgaError::Io {
            path: self.path.clone(),
            source,
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(io)?;
        let mut line = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut line)
            .map_err(|source| QgaError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            return Err(QgaError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the socket",
                ),
            });
        }
        let text: Vec<u8> = line.into_iter().filter(|byte| *byte != 0xff).collect();
        Ok(serde_json::from_slice(&text).ok())
    }
}

/// Connects to a unix socket, retrying while it does not exist or refuses.
fn connect_with_retry(path: &Path, wait: Duration) -> std::io::Result<UnixStream> {
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

    fn encode(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn exec_shell_decodes_output_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut requests = Vec::new();
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                    break;
                }
                let text: Vec<u8> = line.into_iter().filter(|b| *b != 0xff).collect();
                let request: Value = serde_json::from_slice(&text).unwrap();
                let reply = match request["execute"].as_str().unwrap() {
                    "guest-sync" => json!({"return": request["arguments"]["id"]}),
                    "guest-exec" => json!({"return": {"pid": 42}}),
                    "guest-exec-status" => json!({"return": {
                        "exited": true, "exitcode": 3,
                        "out-data": encode("Target 1: iqn\n"), "err-data": encode("warn\n")}}),
                    other => panic!("unexpected {other}"),
                };
                writeln!(writer, "{reply}").unwrap();
                requests.push(request);
            }
            requests
        });
        let mut client = QgaClient::connect(&path, Duration::from_secs(5)).unwrap();
        let output = client
            .exec_shell("tgtadm --op show", Duration::from_secs(5))
            .unwrap();
        drop(client);
        let requests = server.join().unwrap();
        assert_eq!(output.exit_code, 3);
        assert_eq!(output.stdout, "Target 1: iqn\n");
        assert_eq!(output.stderr, "warn\n");
        assert_eq!(
            requests[1]["arguments"]["arg"],
            json!(["-c", "tgtadm --op show"])
        );
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(stream);
        });
        let error = QgaClient::connect(&path, Duration::from_millis(600))
            .err()
            .unwrap();
        assert!(matches!(error, QgaError::NotResponding { .. }), "{error}");
    }
}
