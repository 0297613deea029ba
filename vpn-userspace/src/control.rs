//! vpnd's control socket: `/run/vpnd/<instance>/control.sock`, a unix stream socket that
//! only root can open (mode 0600). One JSON request line in, one JSON response line out:
//!
//! ```text
//! {"cmd":"status"} | {"cmd":"conn-list"} | {"cmd":"sa-list"} | {"cmd":"reload"}
//! {"cmd":"conn-up","name":"N"} | {"cmd":"conn-down","name":"N"}
//! {"cmd":"rekey","name":"N","what":"child"|"ike"}
//! -> {"ok":true,"data":...} | {"ok":false,"error":"..."}
//! ```
//!
//! The listener only parses and forwards; the IKE shell answers from its own task, so no
//! state is shared behind locks. It serves at most [`Limits::connections`] clients at once
//! (the next one is told "busy" and closed), and gives each at most [`Limits::read`] to send
//! its line and [`Limits::write`] to take the answer: a stalled or flooding client cannot
//! hold the daemon's sockets or memory.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    ConnList,
    SaList,
    ConnUp { name: String },
    ConnDown { name: String },
    Rekey { name: String, what: RekeyWhat },
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RekeyWhat {
    Child,
    Ike,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn err(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            data: None,
            error: Some(e.to_string()),
        }
    }
}

pub type Pending = (Request, oneshot::Sender<Response>);

/// The socket path of an instance.
pub fn socket_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(instance).join("control.sock")
}

/// How much of the daemon one control client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Clients served at once; one more is answered "busy" and closed.
    pub connections: usize,
    /// Time to send the request line (at most 64 KiB).
    pub read: Duration,
    /// Time for the IKE task to answer.
    pub answer: Duration,
    /// Time for the client to take the whole answer.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 16,
            read: Duration::from_secs(5),
            answer: Duration::from_secs(10),
            write: Duration::from_secs(5),
        }
    }
}

/// The longest request line.
const MAX_REQUEST: u64 = 64 * 1024;

/// Binds the socket (replacing a stale one), restricts it to root, and forwards requests.
/// The socket file is removed when the returned guard is dropped.
pub fn serve(path: &Path, tx: mpsc::Sender<Pending>) -> Result<SocketGuard> {
    serve_with(path, tx, Limits::default())
}

/// [`serve`] with other limits (tests).
pub fn serve_with(path: &Path, tx: mpsc::Sender<Pending>, limits: Limits) -> Result<SocketGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let slots = std::sync::Arc::new(Semaphore::new(limits.connections));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin on it.
                    tracing::warn!("vpnd: control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tokio::spawn(async move {
                    let busy = Response::err(format!(
                        "busy: {} control clients are being served; try again",
                        limits.connections
                    ));
                    reply(stream, &busy, limits.write).await;
                });
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let resp = answer(&mut stream, &tx, limits).await;
                reply(stream, &resp, limits.write).await;
                drop(slot);
            });
        }
    });
    Ok(SocketGuard(path.to_path_buf()))
}

/// Reads one request line from `stream` and gets the IKE task's answer.
async fn answer(stream: &mut UnixStream, tx: &mpsc::Sender<Pending>, limits: Limits) -> Response {
    let mut line = String::new();
    let mut rd = BufReader::new(stream).take(MAX_REQUEST);
    match tokio::time::timeout(limits.read, rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => match parse_request(&line) {
            Ok(req) => {
                let (otx, orx) = oneshot::channel();
                if tx.send((req, otx)).await.is_err() {
                    Response::err("vpnd is shutting down")
                } else {
                    match tokio::time::timeout(limits.answer, orx).await {
                        Ok(Ok(r)) => r,
                        _ => Response::err("no answer from the IKE task"),
                    }
                }
            }
            Err(e) => e,
        },
        Err(_) => Response::err(format!(
            "no request line within {} s",
            limits.read.as_secs_f64()
        )),
        _ => Response::err("no request line"),
    }
}

/// One request line (newline included or not), or the answer to a bad one.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str::<Request>(line.trim())
        .map_err(|e| Response::err(format!("bad request: {e}")))
}

/// Writes `resp` as one line; gives up (closing the connection) after `timeout`.
async fn reply(mut stream: UnixStream, resp: &Response, timeout: Duration) {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
}

/// Removes the socket file on drop.
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shapes() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"rekey","name":"a","what":"ike"}"#).unwrap();
        assert_eq!(
            r,
            Request::Rekey {
                name: "a".into(),
                what: RekeyWhat::Ike
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"conn-list"}"#).unwrap();
        assert_eq!(r, Request::ConnList);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Response::err("x")).unwrap(),
            r#"{"ok":false,"error":"x"}"#
        );
    }

    fn limits() -> Limits {
        Limits {
            connections: 2,
            read: Duration::from_millis(300),
            answer: Duration::from_secs(2),
            write: Duration::from_millis(300),
        }
    }

    async fn ask(path: &Path, line: &str) -> Response {
        use tokio::io::AsyncWriteExt as _;
        let mut s = UnixStream::connect(path).await.expect("connect");
        s.write_all(line.as_bytes()).await.expect("send");
        let mut out = String::new();
        BufReader::new(s).read_line(&mut out).await.expect("answer");
        serde_json::from_str(&out).expect("a JSON answer")
    }

    fn temp_socket(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("vpnd-ctl-{name}-{}", std::process::id()))
            .join("control.sock")
    }

    /// Clients beyond the limit are told "busy" at once; an idle client's slot comes back
    /// after the read timeout.
    #[tokio::test]
    async fn connection_limit_and_idle_clients() {
        let path = temp_socket("limit");
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let _g = serve_with(&path, tx, limits()).expect("serve");
        tokio::spawn(async move {
            while let Some((_, a)) = rx.recv().await {
                let _ = a.send(Response::ok(serde_json::json!("pong")));
            }
        });
        // Two idle clients take both slots.
        let idle = [
            UnixStream::connect(&path).await.unwrap(),
            UnixStream::connect(&path).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let busy = ask(&path, "{\"cmd\":\"status\"}\n").await;
        assert!(!busy.ok);
        assert!(
            busy.error.as_deref().unwrap_or("").starts_with("busy"),
            "{busy:?}"
        );
        // Their read timeout frees the slots.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = ask(&path, "{\"cmd\":\"status\"}\n").await;
        assert!(r.ok, "{r:?}");
        drop(idle);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A client that asks for a large answer and never reads it loses its connection after
    /// the write timeout, and its slot serves the next client.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped() {
        use tokio::io::AsyncWriteExt as _;
        let path = temp_socket("stall");
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let mut l = limits();
        l.connections = 1;
        let _g = serve_with(&path, tx, l).expect("serve");
        tokio::spawn(async move {
            while let Some((_, a)) = rx.recv().await {
                // Far more than the socket buffers hold.
                let _ = a.send(Response::ok(serde_json::json!("x".repeat(8 << 20))));
            }
        });
        let mut stalled = UnixStream::connect(&path).await.unwrap();
        stalled.write_all(b"{\"cmd\":\"sa-list\"}\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Busy while the stalled client holds the only slot...
        let b = ask(&path, "{\"cmd\":\"status\"}\n").await;
        assert!(!b.ok, "{b:?}");
        // ...served once the write timeout gave it up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let r = ask(&path, "{\"cmd\":\"status\"}\n").await;
        assert!(r.ok, "{:?}", r.error);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(stalled);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
