//! Blocking netlink request/answer, shared by the kernel backend (xfrm) and the probe
//! (rtnetlink, generic netlink, xfrm): a socket with a receive timeout, and the loop that
//! collects one request's answer (every message of a dump, the reply of a GET, or the ACK).

use std::{fmt::Debug, io, os::fd::AsRawFd, time::Duration};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{NetlinkDeserializable, NetlinkMessage, NetlinkPayload};
use netlink_sys::{Socket, SocketAddr};

/// How long a request waits for the kernel's answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// An errno from the kernel, kept so callers can tell "not found" from a real failure.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {err}")]
pub struct KernelError {
    pub what: String,
    pub err: io::Error,
}

impl KernelError {
    pub fn errno(&self) -> Option<i32> {
        self.err.raw_os_error()
    }
}

/// A netlink socket of `proto` in the calling thread's network namespace, bound, connected
/// to the kernel, with a receive timeout of [`TIMEOUT`]. The socket error itself is the
/// source of a failure to create it (callers tell "no such protocol" apart).
pub fn open(proto: isize, what: &str) -> Result<Socket> {
    let mut sock = Socket::new(proto).with_context(|| format!("opening a {what} socket"))?;
    sock.bind_auto()
        .with_context(|| format!("binding the {what} socket"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .with_context(|| format!("connecting the {what} socket"))?;
    let tv = libc::timeval {
        tv_sec: TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on our own socket with a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("SO_RCVTIMEO on the {what} socket"));
    }
    Ok(sock)
}

/// The answer to the request sent with sequence number `seq`: every message of a dump
/// (`dump`), or the one reply of a GET; an empty list for a plain ACK. A kernel error comes
/// back as [`KernelError`] (its errno is kept); no answer within [`TIMEOUT`] is an error.
pub fn receive<T>(sock: &Socket, seq: u32, dump: bool, what: &str) -> Result<Vec<T>>
where
    T: NetlinkDeserializable + Debug,
{
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = match sock.recv(&mut &mut rx[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bail!(
                    "{what}: no answer from the kernel within {} s",
                    TIMEOUT.as_secs()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("{what}: receiving")),
        };
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<T>::deserialize(&rx[off..n])
                .map_err(|e| anyhow::anyhow!("{what}: undecodable answer: {e}"))?;
            let len = (m.header.length as usize).max(16);
            off += (len + 3) & !3;
            if m.header.sequence_number != seq {
                continue;
            }
            match m.payload {
                NetlinkPayload::Error(e) => {
                    if e.code.is_none() {
                        // The ACK of a plain request.
                        return Ok(out);
                    }
                    return Err(KernelError {
                        what: what.to_string(),
                        err: e.to_io(),
                    }
                    .into());
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(x) => {
                    out.push(x);
                    if !dump {
                        // A GET answers with one message and no ACK.
                        return Ok(out);
                    }
                }
                _ => {}
            }
        }
    }
}
