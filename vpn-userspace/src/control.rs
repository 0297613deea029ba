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
//! state is shared behind locks.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
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

/// Binds the socket (replacing a stale one), restricts it to root, and forwards requests.
/// The socket file is removed when the returned guard is dropped.
pub fn serve(path: &Path, tx: mpsc::Sender<Pending>) -> Result<SocketGuard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd).take(64 * 1024);
                let read = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line));
                let resp = match read.await {
                    Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(line.trim()) {
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                Response::err("vpnd is shutting down")
                            } else {
                                match tokio::time::timeout(Duration::from_secs(10), orx).await {
                                    Ok(Ok(r)) => r,
                                    _ => Response::err("no answer from the IKE task"),
                                }
                            }
                        }
                        Err(e) => Response::err(format!("bad request: {e}")),
                    },
                    _ => Response::err("no request line"),
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                let _ = wr.write_all(&out).await;
            });
        }
    });
    Ok(SocketGuard(path.to_path_buf()))
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
}
