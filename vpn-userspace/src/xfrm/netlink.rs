//! A small synchronous client of the kernel's xfrm netlink interface (`NETLINK_XFRM`): SAs
//! (states) and policies added, replaced, read, dumped and deleted. The message layouts are
//! `netlink-packet-xfrm`'s; the socket is `netlink-sys`'s plain blocking one with a receive
//! timeout, so every call is bounded and the IKE shell can call it between two events.

use std::{io, net::IpAddr, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_xfrm::{
    Address, AlgAead, EncapTmpl, ReplayEsn, UserOffloadDev, UserPolicyId, UserSaId, UserTemplate,
    XFRM_ALG_AEAD_NAME_LEN, XfrmAttrs, XfrmMessage,
    constants::{
        IPPROTO_ESP, UDP_ENCAP_ESPINUDP, XFRM_MODE_TUNNEL, XFRM_OFFLOAD_INBOUND, XFRM_OFFLOAD_IPV6,
        XFRM_POLICY_ALLOW, XFRM_POLICY_BLOCK, XFRM_STATE_AF_UNSPEC, XFRM_STATE_ESN,
    },
    policy::{DelGetMessage as PolicyDelGet, ModifyMessage as PolicyModify},
    state::{DelGetMessage as StateDelGet, GetDumpMessage, ModifyMessage as StateModify},
};
use netlink_sys::{Socket, protocols::NETLINK_XFRM};
use zeroize::{Zeroize, Zeroizing};

use crate::dataplane::worker::Prefix;

/// `XFRM_OFFLOAD_PACKET` (Linux 6.2+): the device does the whole ESP packet processing, not
/// only the crypto. Not in netlink-packet-xfrm's constants.
pub const XFRM_OFFLOAD_PACKET: u8 = 4;

/// Policy directions (`XFRM_POLICY_IN/OUT/FWD`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    In,
    Out,
    Fwd,
}

impl Dir {
    fn raw(self) -> u8 {
        match self {
            Dir::In => 0,
            Dir::Out => 1,
            Dir::Fwd => 2,
        }
    }

    fn from_raw(d: u8) -> Option<Dir> {
        match d {
            0 => Some(Dir::In),
            1 => Some(Dir::Out),
            2 => Some(Dir::Fwd),
            _ => None,
        }
    }
}

/// NIC offload asked for an SA (`XFRMA_OFFLOAD_DEV`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Offload {
    pub ifindex: u32,
    /// Full packet offload (`XFRM_OFFLOAD_PACKET`), else crypto offload.
    pub packet: bool,
}

/// One ESP SA in tunnel mode with an RFC 4106 AEAD.
pub struct StateSpec<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    pub reqid: u32,
    /// RFC 4106 keying material: AES key (16 or 32 bytes) followed by the 4-byte salt.
    pub keymat: &'a [u8],
    /// ICV length in bits (128 for the `-16` ciphers).
    pub icv_bits: u32,
    pub esn: bool,
    /// Anti-replay window in packets (inbound); 0 for outbound SAs.
    pub replay_window: u32,
    /// (source port, destination port) of RFC 3948 UDP encapsulation.
    pub encap: Option<(u16, u16)>,
    pub offload: Option<Offload>,
    /// `XFRMA_IF_ID`: binds the SA to the xfrm interface with this id.
    pub if_id: Option<u32>,
    /// Inbound SA (sets `XFRM_OFFLOAD_INBOUND` when offloaded).
    pub inbound: bool,
}

/// What the kernel reports of an SA.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateInfo {
    pub src: String,
    pub dst: String,
    pub spi: u32,
    pub reqid: u32,
    /// Traffic through the SA (`curlft`): bytes are the inner bytes the kernel counts.
    pub bytes: u64,
    pub packets: u64,
    /// Seconds since the epoch the SA was added (`curlft.add_time`).
    pub add_time: u64,
    /// Packets the kernel dropped: replayed, outside the window, failed the ICV.
    pub replay_dropped: u32,
    pub replay_window_dropped: u32,
    pub integrity_failed: u32,
    /// Highest inbound sequence number seen and last outbound one used (ESN: 64 bits).
    pub seq: u64,
    pub oseq: u64,
    /// The offload device's ifindex, if the SA is offloaded.
    pub offload_ifindex: Option<u32>,
    pub offload_flags: u8,
    pub if_id: Option<u32>,
    pub encap: Option<(u16, u16)>,
}

/// One tunnel-mode ESP policy between two prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub src: Prefix,
    pub dst: Prefix,
    pub dir: Dir,
    pub priority: u32,
    /// Block instead of protect (Neutron's `hold` while the tunnel is down).
    pub block: bool,
    /// Template: the outer addresses and the reqid of the SAs that protect the traffic.
    pub tmpl_src: IpAddr,
    pub tmpl_dst: IpAddr,
    pub reqid: u32,
    pub if_id: Option<u32>,
}

/// What the kernel reports of a policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyInfo {
    pub src: String,
    pub dst: String,
    pub dir: Option<Dir>,
    pub priority: u32,
    pub index: u32,
    /// reqids of the policy's templates.
    pub reqids: Vec<u32>,
    pub bytes: u64,
    pub packets: u64,
    pub if_id: Option<u32>,
    #[serde(skip)]
    pub id: PolicyKey,
}

/// What identifies a policy to the kernel: selector, direction, if_id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyKey {
    sel: netlink_packet_xfrm::Selector,
    dir: u8,
    if_id: Option<u32>,
}

/// The xfrm netlink socket of one network namespace.
pub struct Xfrm {
    sock: Socket,
    seq: u32,
}

fn family(a: &IpAddr) -> u16 {
    if a.is_ipv4() {
        libc::AF_INET as u16
    } else {
        libc::AF_INET6 as u16
    }
}

fn addr_string(a: &Address, family: u16) -> String {
    if family == libc::AF_INET6 as u16 {
        a.to_ipv6().to_string()
    } else {
        a.to_ipv4().to_string()
    }
}

fn selector(src: &Prefix, dst: &Prefix) -> netlink_packet_xfrm::Selector {
    let mut s = netlink_packet_xfrm::Selector::default();
    s.source_prefix(&src.addr, src.len);
    s.destination_prefix(&dst.addr, dst.len);
    s
}

pub use crate::nl::KernelError;

impl Xfrm {
    /// The xfrm socket of the caller's network namespace.
    pub fn open() -> Result<Xfrm> {
        let sock = crate::nl::open(NETLINK_XFRM, "xfrm netlink").map_err(|e| {
            let no_xfrm = e
                .root_cause()
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                == Some(libc::EPROTONOSUPPORT);
            if no_xfrm {
                anyhow::anyhow!(
                    "this kernel has no xfrm netlink interface (NETLINK_XFRM: \
                     CONFIG_XFRM_USER, module xfrm_user): the kernel backend cannot work here"
                )
            } else {
                e
            }
        })?;
        Ok(Xfrm { sock, seq: 1 })
    }

    /// The xfrm socket of the named network namespace (`/run/netns/NAME`): opened on a
    /// short-lived thread that enters the namespace; the socket stays bound to it.
    pub fn open_in_netns(name: &str) -> Result<Xfrm> {
        let path = format!("/run/netns/{name}");
        std::thread::scope(|s| {
            s.spawn(|| -> Result<Xfrm> {
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("network namespace {name:?}: opening {path}"))?;
                // SAFETY: setns on this thread only (it ends right after), with a valid fd.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("entering network namespace {name:?}"));
                }
                Xfrm::open()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
        })
    }

    /// Sends one request; returns the messages of the answer (none for a plain ACK).
    pub(crate) fn request(
        &mut self,
        msg: XfrmMessage,
        dump: bool,
        what: &str,
    ) -> Result<Vec<XfrmMessage>> {
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        nl.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.seq = self.seq.wrapping_add(1);
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = Zeroizing::new(vec![0u8; nl.buffer_len()]);
        nl.serialize(&mut buf);
        // The key material lives in the message too.
        if let NetlinkPayload::InnerMessage(XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m)) =
            &mut nl.payload
        {
            for a in &mut m.nlas {
                if let XfrmAttrs::EncryptionAlgAead(alg) = a {
                    alg.alg_key.zeroize();
                }
            }
        }
        self.sock
            .send(&buf, 0)
            .with_context(|| format!("{what}: sending to the kernel"))?;
        crate::nl::receive(&self.sock, self.seq, dump, what)
    }

    /// Adds an SA (`XFRM_MSG_NEWSA`) with `rfc4106(gcm(aes))`; fails if it exists.
    pub fn add_state(&mut self, s: &StateSpec<'_>) -> Result<()> {
        self.add_state_aead(s, "rfc4106(gcm(aes))")
    }

    /// [`Xfrm::add_state`] with another AEAD of the kernel's crypto API (`vpnctl probe` asks
    /// for each one the product may use), `s.keymat` being its key and salt.
    pub fn add_state_aead(&mut self, s: &StateSpec<'_>, aead: &str) -> Result<()> {
        let mut m = StateModify::default();
        m.user_sa_info.source(&s.src);
        m.user_sa_info.destination(&s.dst);
        m.user_sa_info.id.spi = s.spi;
        m.user_sa_info.id.proto = IPPROTO_ESP;
        m.user_sa_info.mode = XFRM_MODE_TUNNEL;
        m.user_sa_info.reqid = s.reqid;
        // Tunnel mode carries IPv4 and IPv6 inside whatever the outer family.
        m.user_sa_info.flags = XFRM_STATE_AF_UNSPEC;
        m.user_sa_info.lifetime_cfg.soft_byte_limit = u64::MAX;
        m.user_sa_info.lifetime_cfg.hard_byte_limit = u64::MAX;
        m.user_sa_info.lifetime_cfg.soft_packet_limit = u64::MAX;
        m.user_sa_info.lifetime_cfg.hard_packet_limit = u64::MAX;
        let mut name = [0u8; XFRM_ALG_AEAD_NAME_LEN];
        let alg = aead.as_bytes();
        if alg.len() >= name.len() {
            bail!(
                "AEAD name {aead:?} longer than the kernel's {}",
                name.len() - 1
            );
        }
        name[..alg.len()].copy_from_slice(alg);
        m.nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: name,
            alg_key_len: (s.keymat.len() * 8) as u32,
            alg_icv_len: s.icv_bits,
            alg_key: s.keymat.to_vec(),
        }));
        if s.esn || s.replay_window > 255 {
            if s.esn {
                m.user_sa_info.flags |= XFRM_STATE_ESN;
            }
            // The kernel wants a bitmap of at least one word and, with ESN, a non-zero window
            // even for outbound SAs (xfrm_init_replay; it is unused there).
            let window = s.replay_window.max(32);
            let words = window.div_ceil(32);
            m.nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
                bmp_len: words,
                oseq: 0,
                seq: 0,
                oseq_hi: 0,
                seq_hi: 0,
                replay_window: window,
                bmp: vec![0; words as usize],
            }));
        } else {
            m.user_sa_info.replay_window = s.replay_window as u8;
        }
        if let Some((sport, dport)) = s.encap {
            m.nlas.push(XfrmAttrs::EncapsulationTemplate(EncapTmpl {
                encap_type: UDP_ENCAP_ESPINUDP,
                encap_sport: sport,
                encap_dport: dport,
                encap_oa: Address::default(),
            }));
        }
        if let Some(o) = s.offload {
            let mut flags = if s.inbound { XFRM_OFFLOAD_INBOUND } else { 0 };
            if s.dst.is_ipv6() {
                flags |= XFRM_OFFLOAD_IPV6;
            }
            if o.packet {
                flags |= XFRM_OFFLOAD_PACKET;
            }
            m.nlas.push(XfrmAttrs::OffloadDevice(UserOffloadDev {
                ifindex: o.ifindex as i32,
                flags,
            }));
        }
        if let Some(id) = s.if_id {
            m.nlas.push(XfrmAttrs::IfId(id));
        }
        self.request(
            XfrmMessage::AddSa(m),
            false,
            &format!("adding xfrm SA spi {:#010x} to {}", s.spi, s.dst),
        )?;
        Ok(())
    }

    fn sa_id(dst: IpAddr, spi: u32) -> StateDelGet {
        StateDelGet {
            user_sa_id: UserSaId {
                daddr: Address::from_ip(&dst),
                spi,
                family: family(&dst),
                proto: IPPROTO_ESP,
            },
            ..Default::default()
        }
    }

    /// Deletes an SA; Ok(false) if there was none.
    pub fn delete_state(&mut self, dst: IpAddr, spi: u32) -> Result<bool> {
        let what = format!("deleting xfrm SA spi {spi:#010x} to {dst}");
        match self.request(XfrmMessage::DeleteSa(Self::sa_id(dst, spi)), false, &what) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One SA, or None.
    pub fn get_state(&mut self, dst: IpAddr, spi: u32) -> Result<Option<StateInfo>> {
        let what = format!("reading xfrm SA spi {spi:#010x} to {dst}");
        match self.request(XfrmMessage::GetSa(Self::sa_id(dst, spi)), false, &what) {
            Ok(v) => Ok(v.into_iter().find_map(|m| state_info(&m))),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every ESP SA of the namespace.
    pub fn dump_states(&mut self) -> Result<Vec<StateInfo>> {
        let v = self.request(
            XfrmMessage::GetDumpSa(GetDumpMessage::default()),
            true,
            "dumping xfrm SAs",
        )?;
        Ok(v.iter().filter_map(state_info).collect())
    }

    /// Adds or replaces a policy (`XFRM_MSG_UPDPOLICY`).
    pub fn update_policy(&mut self, p: &PolicySpec) -> Result<()> {
        let mut m = PolicyModify::default();
        m.user_policy_info.selector = selector(&p.src, &p.dst);
        m.user_policy_info.direction = p.dir.raw();
        m.user_policy_info.priority = p.priority;
        m.user_policy_info.action = if p.block {
            XFRM_POLICY_BLOCK
        } else {
            XFRM_POLICY_ALLOW
        };
        let lft = &mut m.user_policy_info.lifetime_cfg;
        lft.soft_byte_limit = u64::MAX;
        lft.hard_byte_limit = u64::MAX;
        lft.soft_packet_limit = u64::MAX;
        lft.hard_packet_limit = u64::MAX;
        // A blocking policy keeps its template too: its reqid is how a sweep finds it.
        {
            let mut t = UserTemplate::default();
            t.id.daddr = Address::from_ip(&p.tmpl_dst);
            t.id.proto = IPPROTO_ESP;
            t.family = family(&p.tmpl_dst);
            t.saddr = Address::from_ip(&p.tmpl_src);
            t.reqid = p.reqid;
            t.mode = XFRM_MODE_TUNNEL;
            m.nlas.push(XfrmAttrs::Template(vec![t]));
        }
        if let Some(id) = p.if_id {
            m.nlas.push(XfrmAttrs::IfId(id));
        }
        let what = format!(
            "setting xfrm policy {:?} {}/{} -> {}/{}",
            p.dir, p.src.addr, p.src.len, p.dst.addr, p.dst.len
        );
        self.request(XfrmMessage::UpdatePolicy(m), false, &what)?;
        Ok(())
    }

    /// Deletes the policy of (selector, direction, if_id); Ok(false) if there was none.
    pub fn delete_policy(
        &mut self,
        src: &Prefix,
        dst: &Prefix,
        dir: Dir,
        if_id: Option<u32>,
    ) -> Result<bool> {
        self.delete_policy_key(&PolicyKey {
            sel: selector(src, dst),
            dir: dir.raw(),
            if_id,
        })
    }

    pub fn delete_policy_key(&mut self, k: &PolicyKey) -> Result<bool> {
        let mut m = PolicyDelGet {
            user_policy_id: UserPolicyId {
                selector: k.sel,
                index: 0,
                direction: k.dir,
            },
            ..Default::default()
        };
        if let Some(id) = k.if_id {
            m.nlas.push(XfrmAttrs::IfId(id));
        }
        match self.request(
            XfrmMessage::DeletePolicy(m),
            false,
            "deleting an xfrm policy",
        ) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every policy of the namespace (main type).
    pub fn dump_policies(&mut self) -> Result<Vec<PolicyInfo>> {
        let v = self.request(
            XfrmMessage::GetPolicy(PolicyDelGet::default()),
            true,
            "dumping xfrm policies",
        )?;
        Ok(v.iter().filter_map(policy_info).collect())
    }
}

/// Whether an error chain carries a kernel errno.
pub fn is_errno(e: &anyhow::Error, errno: i32) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<KernelError>()
            .is_some_and(|k| k.errno() == Some(errno))
    })
}

fn state_info(m: &XfrmMessage) -> Option<StateInfo> {
    let (XfrmMessage::AddSa(s) | XfrmMessage::UpdateSa(s)) = m else {
        return None;
    };
    let i = &s.user_sa_info;
    let fam = i.family;
    let mut out = StateInfo {
        src: addr_string(&i.saddr, fam),
        dst: addr_string(&i.id.daddr, fam),
        spi: i.id.spi,
        reqid: i.reqid,
        bytes: i.lifetime_cur.bytes,
        packets: i.lifetime_cur.packets,
        add_time: i.lifetime_cur.add_time,
        replay_dropped: i.stats.replay,
        replay_window_dropped: i.stats.replay_window,
        integrity_failed: i.stats.integrity_failed,
        ..Default::default()
    };
    for a in &s.nlas {
        match a {
            XfrmAttrs::ReplayStateEsn(r) => {
                out.seq = ((r.seq_hi as u64) << 32) | r.seq as u64;
                out.oseq = ((r.oseq_hi as u64) << 32) | r.oseq as u64;
            }
            XfrmAttrs::ReplayState(r) => {
                out.seq = r.seq as u64;
                out.oseq = r.oseq as u64;
            }
            XfrmAttrs::OffloadDevice(o) => {
                out.offload_ifindex = Some(o.ifindex as u32);
                out.offload_flags = o.flags;
            }
            XfrmAttrs::IfId(id) => out.if_id = Some(*id),
            XfrmAttrs::EncapsulationTemplate(e) => out.encap = Some((e.encap_sport, e.encap_dport)),
            _ => {}
        }
    }
    Some(out)
}

fn policy_info(m: &XfrmMessage) -> Option<PolicyInfo> {
    let (XfrmMessage::AddPolicy(p) | XfrmMessage::UpdatePolicy(p)) = m else {
        return None;
    };
    let i = &p.user_policy_info;
    let fam = i.selector.family;
    let mut reqids = Vec::new();
    let mut if_id = None;
    for a in &p.nlas {
        match a {
            XfrmAttrs::Template(ts) => reqids.extend(ts.iter().map(|t| t.reqid)),
            XfrmAttrs::IfId(id) => if_id = Some(*id),
            _ => {}
        }
    }
    Some(PolicyInfo {
        src: format!(
            "{}/{}",
            addr_string(&i.selector.saddr, fam),
            i.selector.prefixlen_s
        ),
        dst: format!(
            "{}/{}",
            addr_string(&i.selector.daddr, fam),
            i.selector.prefixlen_d
        ),
        dir: Dir::from_raw(i.direction),
        priority: i.priority,
        index: i.index,
        reqids,
        bytes: i.lifetime_cur.bytes,
        packets: i.lifetime_cur.packets,
        if_id,
        id: PolicyKey {
            sel: i.selector,
            dir: i.direction,
            if_id,
        },
    })
}

/// Sets `UDP_ENCAP_ESPINUDP` on a UDP socket (the NAT-T port): the kernel then takes ESP in
/// UDP arriving there for its SAs and still delivers IKE (non-ESP marker) to the socket.
pub fn set_udp_encap(fd: &impl AsRawFd) -> Result<()> {
    let v: libc::c_int = UDP_ENCAP_ESPINUDP as libc::c_int;
    // SAFETY: setsockopt with a c_int on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_ENCAP,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setting UDP_ENCAP_ESPINUDP");
    }
    Ok(())
}
