//! QEMU Machine Protocol client over a unix socket, on tokio: a reader task
//! takes every message as it arrives, keeps the asynchronous events in a
//! buffer (waitable by name) and hands replies to the command in flight.
//! Pulls and replugs virtual cables (`set_link`) and quits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};

/// How long a command may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The events a reader task has received and not yet handed out.
#[derive(Default)]
struct EventBuffer {
    events: Mutex<Vec<Value>>,
    arrived: Notify,
}

/// A connected QMP session in command mode.
pub struct QmpClient {
    path: PathBuf,
    writer: OwnedWriteHalf,
    replies: mpsc::UnboundedReceiver<Result<Value, QmpError>>,
    events: Arc<EventBuffer>,
}

impl QmpClient {
    /// Connects (retrying until `wait` has passed, as QEMU may still be
    /// creating the socket), reads the greeting and enters command mode.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Self, QmpError> {
        let stream = connect_with_retry(path, wait)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                waited: wait,
                source,
            })?;
        let (reader, writer) = stream.into_split();
        let (sender, replies) = mpsc::unbounded_channel();
        let events = Arc::new(EventBuffer::default());
        crate::runtime::runtime().spawn(read_messages(
            path.to_path_buf(),
            reader,
            sender,
            Arc::clone(&events),
        ));
        let mut client = Self {
            path: path.to_path_buf(),
            writer,
            replies,
            events,
        };
        client.next_reply().await?;
        client.execute("qmp_capabilities", json!({})).await?;
        Ok(client)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let request = json!({"execute": command, "arguments": arguments});
        let mut line = serde_json::to_vec(&request).expect("JSON values serialize");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|source| self.io_error(source))?;
        let reply = self.next_reply().await?;
        if let Some(value) = reply.get("return") {
            return Ok(value.clone());
        }
        let error = reply.get("error").cloned().unwrap_or_default();
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Err(QmpError::Command {
            command: command.into(),
            class: text("class"),
            desc: text("desc"),
        })
    }

    /// Pulls (`up == false`) or replugs the virtual cable of a NIC or netdev.
    pub async fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        self.execute("set_link", json!({"name": name, "up": up}))
            .await
            .map(|_| ())
    }

    /// Presses the virtual power button (ACPI): the guest shuts down.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", json!({}))
            .await
            .map(|_| ())
    }

    /// Asks QEMU to exit at once.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", json!({})).await {
            Ok(_) => Ok(()),
            // QEMU may close the socket before the reply arrives.
            Err(QmpError::Io { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Events received so far, oldest first; the buffer is emptied.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut *self.events.events.lock().expect("event lock"))
    }

    /// Waits until an event named `name` arrives (or has arrived and not
    /// been taken); removes and returns it, or `None` after `timeout`.
    pub async fn wait_for_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let events = Arc::clone(&self.events);
        let wait = async move {
            loop {
                let arrived = events.arrived.notified();
                {
                    let mut buffer = events.events.lock().expect("event lock");
                    if let Some(index) = buffer.iter().position(|event| event["event"] == name) {
                        return buffer.remove(index);
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    async fn next_reply(&mut self) -> Result<Value, QmpError> {
        match tokio::time::timeout(REPLY_TIMEOUT, self.replies.recv()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => Err(self.io_error(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QEMU closed the socket",
            ))),
            Err(_) => Err(self.io_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {REPLY_TIMEOUT:?}"),
            ))),
        }
    }

    fn io_error(&self, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The reader task: events into the buffer, everything else (greeting,
/// replies, unreadable lines) to the command side, until the socket closes.
async fn read_messages(
    path: PathBuf,
    reader: OwnedReadHalf,
    replies: mpsc::UnboundedSender<Result<Value, QmpError>>,
    events: Arc<EventBuffer>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let message = serde_json::from_str::<Value>(&line).map_err(|_| QmpError::Protocol {
            path: path.clone(),
            line: line.trim_end().to_string(),
        });
        match message {
            Ok(event) if event.get("event").is_some() => {
                events.events.lock().expect("event lock").push(event);
                events.arrived.notify_waiters();
            }
            other => {
                if replies.send(other).is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects to a unix socket, retrying while it does not exist or refuses.
pub async fn connect_with_retry(path: &Path, wait: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
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
            writeln!(writer, r#"{{"event": "POWERDOWN", "data": {{}}}}"#).unwrap();
            request
        });
        crate::runtime::block_on(async {
            let mut client = QmpClient::connect(&path, Duration::from_secs(5))
                .await
                .unwrap();
            client.set_link("san-a", false).await.unwrap();
            let error = client.set_link("nic9", true).await.unwrap_err().to_string();
            assert!(error.contains("DeviceNotFound: no nic9"), "{error}");
            let event = client
                .wait_for_event("POWERDOWN", Duration::from_secs(5))
                .await;
            assert_eq!(event.unwrap()["event"], "POWERDOWN");
            assert_eq!(client.take_events().len(), 1);
            assert!(
                client
                    .wait_for_event("SHUTDOWN", Duration::from_millis(100))
                    .await
                    .is_none()
            );
        });
        let request = server.join().unwrap();
        assert_eq!(request["execute"], "set_link");
        assert_eq!(request["arguments"], json!({"name": "san-a", "up": false}));
    }

    #[test]
    fn connect_gives_up_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none");
        let error = crate::runtime::block_on(QmpClient::connect(&path, Duration::from_millis(200)))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("did not accept a connection"),
            "{error}"
        );
    }
}
