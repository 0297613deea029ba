//! Hostile IKE peers and packet floods built on vpnd's own codec, for the hostile-peer suite
//! (`tests/tests/hostile_peers.rs`, issue 14). The attacker holds a connection's PSK (a real
//! but malicious peer), or only an address, or not even that (spoofed sources).
//!
//! IKE messages are cut into their payloads ([`IkeMsg`]) so an attack can change one field
//! of an otherwise valid message (a KE length, a truncated payload, a message ID) and put it
//! back together with every length and next-payload field consistent, or not, as it likes.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use vpn_userspace::ike::{
    conn::ConnConfig,
    endpoint::{ConnStatus, Endpoint, Event, Settings},
};

use crate::{netns::NetNs, pkt::Packet};

pub const PT_SA: u8 = 33;
pub const PT_KE: u8 = 34;
pub const PT_NONCE: u8 = 40;
pub const PT_NOTIFY: u8 = 41;
pub const COOKIE: u16 = 16390;
const HDR: usize = 28;

/// An IKE message as header and (type, body) payloads.
#[derive(Clone, Debug)]
pub struct IkeMsg {
    pub hdr: [u8; HDR],
    pub payloads: Vec<(u8, Vec<u8>)>,
}

impl IkeMsg {
    /// Splits an unencrypted message (IKE_SA_INIT) into its payloads.
    pub fn parse(b: &[u8]) -> Result<IkeMsg> {
        let hdr: [u8; HDR] = b.get(..HDR).context("short IKE header")?.try_into()?;
        let (mut next, mut off, mut payloads) = (hdr[16], HDR, vec![]);
        while next != 0 {
            let g = b.get(off..off + 4).context("short payload header")?;
            let len = usize::from(u16::from_be_bytes([g[2], g[3]]));
            let body = b.get(off + 4..off + len).context("payload past the end")?;
            payloads.push((next, body.to_vec()));
            next = g[0];
            off += len;
        }
        Ok(IkeMsg { hdr, payloads })
    }

    /// The message with consistent next-payload and length fields.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = self.hdr.to_vec();
        out[16] = self.payloads.first().map_or(0, |p| p.0);
        for (i, (_, body)) in self.payloads.iter().enumerate() {
            out.push(self.payloads.get(i + 1).map_or(0, |p| p.0));
            out.push(0);
            out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        let len = out.len() as u32;
        out[24..28].copy_from_slice(&len.to_be_bytes());
        out
    }

    pub fn body_mut(&mut self, ty: u8) -> Option<&mut Vec<u8>> {
        self.payloads
            .iter_mut()
            .find(|p| p.0 == ty)
            .map(|p| &mut p.1)
    }

    pub fn set_spi_i(&mut self, spi: u64) {
        self.hdr[..8].copy_from_slice(&spi.to_be_bytes());
    }

    /// The data of the first Notify of type `ty`.
    pub fn notify(&self, ty: u16) -> Option<&[u8]> {
        self.payloads.iter().find_map(|(t, b)| {
            let spi = usize::from(*b.get(1)?);
            (*t == PT_NOTIFY && b.get(2..4)? == ty.to_be_bytes()).then(|| b.get(4 + spi..))?
        })
    }

    /// The message with a COOKIE notify first (RFC 7296 2.6: the cookie is echoed first).
    pub fn with_cookie(&self, cookie: &[u8]) -> IkeMsg {
        let mut body = vec![0, 0];
        body.extend_from_slice(&COOKIE.to_be_bytes());
        body.extend_from_slice(cookie);
        let mut m = self.clone();
        m.payloads
            .retain(|p| !(p.0 == PT_NOTIFY && p.1.get(2..4) == Some(&COOKIE.to_be_bytes())));
        m.payloads.insert(0, (PT_NOTIFY, body));
        m
    }
}

/// A peer built on vpnd's sans-IO endpoint, on a real UDP socket in a namespace.
pub struct IkePeer {
    pub ep: Endpoint,
    pub sock: UdpSocket,
    pub local: SocketAddr,
    pub events: Vec<Event>,
    /// Every datagram sent, in order (to replay them).
    pub sent: Vec<Vec<u8>>,
}

impl IkePeer {
    /// Binds `local` (port 500) inside `ns` and adds `conn` (the connection it attacks with).
    pub fn new(ns: &NetNs, local: SocketAddr, conn: ConnConfig) -> Result<IkePeer> {
        let sock = {
            let _in = ns.enter()?;
            UdpSocket::bind(local).with_context(|| format!("binding {local}"))?
        };
        sock.set_read_timeout(Some(Duration::from_millis(5)))?;
        let mut ep = Endpoint::new(Settings::default());
        ep.add_conn(conn);
        Ok(IkePeer {
            ep,
            sock,
            local,
            events: vec![],
            sent: vec![],
        })
    }

    /// Sends what the endpoint wants sent, feeds it what arrives and its timers, until `done`
    /// or `timeout`.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Endpoint, &[Event]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let now = Instant::now();
            while let Some(t) = self.ep.poll_transmit() {
                self.sock.send_to(&t.data, t.dst)?;
                self.sent.push(t.data);
            }
            while let Some(e) = self.ep.poll_event() {
                self.events.push(e);
            }
            if done(&self.ep, &self.events) {
                return Ok(());
            }
            if now > deadline {
                bail!("timed out; events: {:?}", self.statuses());
            }
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                self.ep.handle(now, self.local, from, &buf[..n]);
            }
            if self.ep.poll_timeout().is_some_and(|t| t <= Instant::now()) {
                self.ep.handle_timeout(Instant::now());
            }
        }
    }

    /// The statuses the endpoint reported, with their reasons.
    pub fn statuses(&self) -> Vec<(ConnStatus, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Status { status, reason, .. } => Some((*status, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The first message the endpoint sends when it initiates (its IKE_SA_INIT request).
    pub fn first_request(&mut self) -> Result<Vec<u8>> {
        self.ep.initiate(0, Instant::now());
        let t = self.ep.poll_transmit().context("no IKE_SA_INIT to send")?;
        // Forget the exchange: the caller sends copies of it as it likes.
        self.ep.terminate(0, Instant::now());
        while self.ep.poll_transmit().is_some() {}
        Ok(t.data)
    }
}

/// A raw IPv4 socket (IP_HDRINCL) in a namespace: sends packets with any source address.
pub struct RawIp(i32);

impl RawIp {
    pub fn new(ns: &NetNs) -> Result<RawIp> {
        let _in = ns.enter()?;
        // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw IPv4 socket");
        }
        Ok(RawIp(fd))
    }

    /// Sends an IPv4 packet (header included) to its destination. Errors (a full queue) are
    /// returned, not retried: a flood goes as fast as the stack takes it.
    pub fn send(&self, ip: &[u8]) -> std::io::Result<()> {
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        // SAFETY: zeroed sockaddr_in filled below; valid buffer.
        let n = unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            libc::sendto(
                self.0,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawIp {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

/// An IPv4/UDP packet (no Ethernet header) from `src:sport` to `dst:dport`.
pub fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    Packet::eth()
        .ipv4(&src.to_string(), &dst.to_string())
        .udp(sport, dport)
        .payload(payload)
        .build()[14..]
        .to_vec()
}

/// An IPv4/ESP packet (no Ethernet header): `spi`, `seq`, then `body` (IV, data, ICV).
pub fn esp4(src: Ipv4Addr, dst: Ipv4Addr, spi: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    Packet::eth()
        .ipv4(&src.to_string(), &dst.to_string())
        .esp(spi, seq)
        .payload(body)
        .build()[14..]
        .to_vec()
}

/// A small deterministic generator (xorshift64*): floods are reproducible from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Resident memory of a process, from /proc (kB).
pub fn rss_kb(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
