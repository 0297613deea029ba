//! Client of vpnd's control socket `/run/vpnd/<instance>/control.sock`: one JSON request line,
//! one JSON response line (`{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`), then close.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path of an instance's control socket.
pub fn socket_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(instance).join("control.sock")
}

/// Instances with a control socket under `run_dir`.
pub fn socket_instances(run_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("control.sock").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error("vpnd is not running for instance {instance} (no listener on {path})")]
    NotRunning { instance: String, path: String },
    /// vpnd answered `ok: false`.
    #[error("vpnd: {0}")]
    Daemon(String),
    #[error("control socket {path}: {msg}")]
    Protocol { path: String, msg: String },
}

/// The response line.
#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    error: Option<String>,
}

/// Sends one request and returns the daemon's `data`.
pub fn request(
    run_dir: &Path,
    instance: &str,
    req: &Value,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let path = socket_path(run_dir, instance);
    let p = path.display().to_string();
    let proto = |msg: String| ClientError::Protocol {
        path: p.clone(),
        msg,
    };
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                instance: instance.to_string(),
                path: p.clone(),
            });
        }
        Err(e) => return Err(proto(format!("connect: {e}"))),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut line = serde_json::to_string(req).expect("a JSON value");
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| proto(format!("write: {e}")))?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .map_err(|e| proto(format!("read: {e}")))?;
    parse_response(&resp).map_err(|e| match e {
        ClientError::Protocol { msg, .. } => proto(msg),
        e => e,
    })
}

/// Decodes a response line.
pub fn parse_response(line: &str) -> Result<Value, ClientError> {
    let proto = |msg: String| ClientError::Protocol {
        path: String::new(),
        msg,
    };
    if line.trim().is_empty() {
        return Err(proto("closed without an answer".into()));
    }
    let r: Response =
        serde_json::from_str(line.trim()).map_err(|e| proto(format!("bad answer: {e}")))?;
    if r.ok {
        let mut data = r.data;
        redact(&mut data);
        Ok(data)
    } else {
        Err(ClientError::Daemon(
            r.error.unwrap_or_else(|| "request failed".into()),
        ))
    }
}

/// Drops any field that could hold key material, however the daemon's answer evolves:
/// vpnctl never prints keys or PSKs.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !is_secret_field(k));
            m.values_mut().for_each(redact);
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// "psk", "enc_key", "keymat", "sk_secret"... but not "rekey_in_secs".
fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("key")
        || n.contains("psk")
        || n.contains("secret")
        || n.contains("password")
        || n.split(['_', '-']).any(|t| t == "key" || t == "keys")
}

/// `status` data. Unknown fields are ignored, missing ones default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub instance: String,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub wire: Option<String>,
    pub tenant_interfaces: Vec<String>,
    pub xdp_mode: Option<String>,
    pub xdp_carrier: Option<String>,
    pub workers: Option<u32>,
    pub connections: Option<u32>,
    pub active: Option<u32>,
    pub ike: Value,
    /// The AF_XDP workers' counters, drops by reason under `drops`.
    pub worker: Value,
    /// `[ike.limits]`: each limit, what is in use, how often it was hit.
    pub limits: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Child {
    pub id: u64,
    pub spi_in: u32,
    pub spi_out: u32,
}

/// One entry of `conn-list`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conn {
    pub name: String,
    pub status: String,
    pub reason: Option<String>,
    pub local: String,
    pub peer: String,
    pub tenant: Option<u32>,
    pub initiator: Option<String>,
    pub dpd_action: Option<String>,
    pub admin_state_up: Option<bool>,
    pub children: Vec<Child>,
    /// The connection's IKE_SAs (shown as a count).
    pub ike_sas: Vec<Value>,
}

/// One entry of `sa-list`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sa {
    pub conn: String,
    pub child: u64,
    pub spi_in: u32,
    pub spi_out: u32,
    pub cipher: String,
    pub esn: bool,
    pub local: String,
    pub peer: String,
    pub udp_encap: Option<(u16, u16)>,
    pub local_ts: Vec<String>,
    pub peer_ts: Vec<String>,
    pub tenant: u32,
    pub slot_in: Option<u32>,
    pub slot_out: Option<u32>,
    pub active: Option<bool>,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub seq_out: u64,
    pub replay_top: u64,
    pub age_secs: Option<u64>,
    pub rekey_in_secs: Option<u64>,
    pub lifetime_left_secs: Option<u64>,
    /// The CHILD_SA's IKE state, e.g. "INSTALLED", "REKEYED".
    pub state: Option<String>,
    /// "afxdp" or "kernel" (older daemons: absent).
    #[serde(default)]
    pub backend: Option<String>,
    /// NIC offload of a kernel SA pair ("none", "crypto", ...).
    #[serde(default)]
    pub offload: Option<String>,
    /// The kernel's counters of a kernel SA pair.
    #[serde(default)]
    pub xfrm: Option<XfrmCounters>,
}

/// xfrm's own counters of a kernel-backend SA pair, as vpnd reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct XfrmCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub replay_dropped: u32,
    pub replay_window_dropped: u32,
    pub integrity_failed: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses() {
        let d =
            parse_response(r#"{"ok":true,"data":{"a":1,"psk":"x","k":{"enc_key":"y","keymat":"z"},"rekey_in_secs":5}}"#).unwrap();
        assert_eq!(d, json!({"a":1,"k":{},"rekey_in_secs":5}));
        match parse_response(r#"{"ok":false,"error":"no connection \"x\""}"#) {
            Err(ClientError::Daemon(e)) => assert_eq!(e, "no connection \"x\""),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            parse_response(""),
            Err(ClientError::Protocol { .. })
        ));
        assert!(matches!(
            parse_response("garbage"),
            Err(ClientError::Protocol { .. })
        ));
    }

    #[test]
    fn tolerant_of_extra_and_missing_fields() {
        let c: Conn = serde_json::from_value(json!({"name":"east-west","status":"ACTIVE",
            "peer":"172.24.4.233","new_field":[1,2],"children":[{"id":1,"spi_in":5,"x":0}]}))
        .unwrap();
        assert_eq!(c.name, "east-west");
        assert_eq!(c.children[0].spi_in, 5);
        assert_eq!(c.reason, None);
        let s: Sa = serde_json::from_value(json!({"conn":"c","udp_encap":[4500,4500],
            "packets_in":3,"future":true}))
        .unwrap();
        assert_eq!(s.udp_encap, Some((4500, 4500)));
        let s: Sa = serde_json::from_value(json!({"conn":"c","udp_encap":null})).unwrap();
        assert_eq!(s.udp_encap, None);
        let st: Status =
            serde_json::from_value(json!({"instance":"e","pid":7,"ike":{"a":1}})).unwrap();
        assert_eq!(st.pid, Some(7));
    }

    #[test]
    fn absent_socket_is_not_running() {
        let dir = std::env::temp_dir().join(format!("vpnctl-test-{}", std::process::id()));
        let r = request(
            &dir,
            "nope",
            &json!({"cmd":"status"}),
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(ClientError::NotRunning { .. })), "{r:?}");
    }

    #[test]
    fn one_line_each_way() {
        let dir = std::env::temp_dir().join(format!("vpnctl-sock-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("i")).unwrap();
        let path = socket_path(&dir, "i");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            let v: Value = serde_json::from_str(&req).unwrap();
            let mut s = s;
            writeln!(s, r#"{{"ok":true,"data":{{"got":{}}}}}"#, v).unwrap();
        });
        let d = request(&dir, "i", &json!({"cmd":"reload"}), Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(d, json!({"got":{"cmd":"reload"}}));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
