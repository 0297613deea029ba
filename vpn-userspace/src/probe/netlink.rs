//! Two netlink questions about devices, asked in the calling thread's network namespace:
//!
//! - rtnetlink (`RTM_GETLINK`): each link's name, index and `IFLA_XDP` (the attach mode and the
//!   id of the program attached in each mode), decoded by `netlink-packet-route`;
//! - the generic netlink family `netdev` (Linux 6.3+, `NETDEV_CMD_DEV_GET`): the device's
//!   `xdp_features` (native XDP, redirect, AF_XDP zero-copy...), as `ynl --family netdev` shows
//!   them. Kernels before 6.3 have no such family: [`Netdev::open`] says so.
//!
//! Both only read; neither attaches anything to a device.

use std::fmt::Debug;

use anyhow::{Context, Result};
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
    NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_u32, emit_u64, parse_u32,
    parse_u64,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{
    Socket,
    protocols::{NETLINK_GENERIC, NETLINK_ROUTE},
};

fn open(proto: isize, what: &str) -> Result<Socket> {
    crate::nl::open(proto, what)
}

/// Sends one request and collects the answer: every message of a dump, or the one reply of a
/// plain request. A kernel error comes back as [`KernelError`] (its errno is kept).
fn transact<T>(sock: &mut Socket, payload: T, dump: bool, seq: u32, what: &str) -> Result<Vec<T>>
where
    T: NetlinkSerializable + NetlinkDeserializable + Debug,
    NetlinkPayload<T>: From<T>,
{
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    nl.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)
        .with_context(|| format!("{what}: sending to the kernel"))?;
    crate::nl::receive(sock, seq, dump, what)
}

/// Where an XDP program is attached (`XDP_ATTACHED_*`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (`XDP_ATTACHED_DRV`, `ip link` shows `xdp`/`xdpdrv`).
    Native,
    /// Generic, after the skb is built (`XDP_ATTACHED_SKB`, `xdpgeneric`).
    Generic,
    /// In the NIC (`XDP_ATTACHED_HW`, `xdpoffload`).
    Offload,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Offload => "offload",
        }
    }
}

/// A link as rtnetlink shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The programs attached, one per mode (several only in `XDP_ATTACHED_MULTI`).
    pub xdp: Vec<(XdpMode, u32)>,
}

/// The name, index and XDP programs of an `RTM_NEWLINK` message.
pub fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        ..Default::default()
    };
    let mut single: Option<(Option<XdpMode>, u32)> = None;
    let mut attached = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Xdp(xs) => {
                for x in xs {
                    match x {
                        LinkXdp::Attached(at) => attached = Some(*at),
                        LinkXdp::DrvProgId(id) if *id != 0 => link.xdp.push((XdpMode::Native, *id)),
                        LinkXdp::SkbProgId(id) if *id != 0 => {
                            link.xdp.push((XdpMode::Generic, *id))
                        }
                        LinkXdp::HwProgId(id) if *id != 0 => link.xdp.push((XdpMode::Offload, *id)),
                        LinkXdp::ProgId(id) if *id != 0 => single = Some((None, *id)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // Kernels report the per-mode ids beside the single one; older ones may give only
    // IFLA_XDP_PROG_ID with the mode in IFLA_XDP_ATTACHED.
    if link.xdp.is_empty()
        && let Some((_, id)) = single
    {
        let mode = match attached {
            Some(XdpAttached::Driver) => Some(XdpMode::Native),
            Some(XdpAttached::SocketBuffer) => Some(XdpMode::Generic),
            Some(XdpAttached::Hardware) => Some(XdpMode::Offload),
            _ => None,
        };
        if let Some(mode) = mode {
            link.xdp.push((mode, id));
        }
    }
    link
}

/// Every link of the calling thread's network namespace.
pub fn links() -> Result<Vec<Link>> {
    let mut sock = open(NETLINK_ROUTE, "rtnetlink")?;
    let msgs = transact(
        &mut sock,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        true,
        1,
        "listing links (RTM_GETLINK)",
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

// ---------------------------------------------------------------- the netdev family

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;
const NETDEV_A_DEV_XSK_FEATURES: u16 = 6;

/// `enum netdev_xdp_act` (include/uapi/linux/netdev.h).
pub const XDP_ACT_BASIC: u64 = 1;
pub const XDP_ACT_REDIRECT: u64 = 2;
pub const XDP_ACT_NDO_XMIT: u64 = 4;
pub const XDP_ACT_XSK_ZEROCOPY: u64 = 8;
pub const XDP_ACT_HW_OFFLOAD: u64 = 16;
pub const XDP_ACT_RX_SG: u64 = 32;
pub const XDP_ACT_NDO_XMIT_SG: u64 = 64;

/// The names `ynl` gives the `xdp-features` bits.
pub fn xdp_feature_names(bits: u64) -> Vec<&'static str> {
    [
        (XDP_ACT_BASIC, "basic"),
        (XDP_ACT_REDIRECT, "redirect"),
        (XDP_ACT_NDO_XMIT, "ndo-xmit"),
        (XDP_ACT_XSK_ZEROCOPY, "xsk-zerocopy"),
        (XDP_ACT_HW_OFFLOAD, "hw-offload"),
        (XDP_ACT_RX_SG, "rx-sg"),
        (XDP_ACT_NDO_XMIT_SG, "ndo-xmit-sg"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect()
}

/// netlink-packet-core's context on a decode error (`anyhow::Context` is in scope too).
fn dc<T>(r: Result<T, DecodeError>, what: &'static str) -> Result<T, DecodeError> {
    ErrorContext::context(r, what)
}

/// One attribute of a `netdev` device message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetdevAttr {
    Ifindex(u32),
    XdpFeatures(u64),
    XdpZcMaxSegs(u32),
    XdpRxMetadataFeatures(u64),
    XskFeatures(u64),
    Other(DefaultNla),
}

impl Nla for NetdevAttr {
    fn value_len(&self) -> usize {
        match self {
            NetdevAttr::Ifindex(_) | NetdevAttr::XdpZcMaxSegs(_) => 4,
            NetdevAttr::XdpFeatures(_)
            | NetdevAttr::XdpRxMetadataFeatures(_)
            | NetdevAttr::XskFeatures(_) => 8,
            NetdevAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            NetdevAttr::Ifindex(_) => NETDEV_A_DEV_IFINDEX,
            NetdevAttr::XdpFeatures(_) => NETDEV_A_DEV_XDP_FEATURES,
            NetdevAttr::XdpZcMaxSegs(_) => NETDEV_A_DEV_XDP_ZC_MAX_SEGS,
            NetdevAttr::XdpRxMetadataFeatures(_) => NETDEV_A_DEV_XDP_RX_METADATA_FEATURES,
            NetdevAttr::XskFeatures(_) => NETDEV_A_DEV_XSK_FEATURES,
            NetdevAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        // The buffer is value_len() long: the emitters cannot fail.
        let _ = match self {
            NetdevAttr::Ifindex(v) | NetdevAttr::XdpZcMaxSegs(v) => emit_u32(buf, *v),
            NetdevAttr::XdpFeatures(v)
            | NetdevAttr::XdpRxMetadataFeatures(v)
            | NetdevAttr::XskFeatures(v) => emit_u64(buf, *v),
            NetdevAttr::Other(n) => {
                n.emit_value(buf);
                Ok(())
            }
        };
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NetdevAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            NETDEV_A_DEV_IFINDEX => NetdevAttr::Ifindex(dc(parse_u32(v), "ifindex")?),
            NETDEV_A_DEV_XDP_FEATURES => NetdevAttr::XdpFeatures(dc(parse_u64(v), "xdp-features")?),
            NETDEV_A_DEV_XDP_ZC_MAX_SEGS => {
                NetdevAttr::XdpZcMaxSegs(dc(parse_u32(v), "xdp-zc-max-segs")?)
            }
            NETDEV_A_DEV_XDP_RX_METADATA_FEATURES => {
                NetdevAttr::XdpRxMetadataFeatures(dc(parse_u64(v), "xdp-rx-metadata-features")?)
            }
            NETDEV_A_DEV_XSK_FEATURES => NetdevAttr::XskFeatures(dc(parse_u64(v), "xsk-features")?),
            _ => NetdevAttr::Other(dc(DefaultNla::parse(buf), "netdev attribute")?),
        })
    }
}

/// A message of the `netdev` family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetdevMsg {
    pub cmd: u8,
    pub attrs: Vec<NetdevAttr>,
}

impl GenlFamily for NetdevMsg {
    fn family_name() -> &'static str {
        "netdev"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for NetdevMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buf: &mut [u8]) {
        self.attrs.as_slice().emit(buf)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NetdevMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = dc(
            NlasIterator::new(buf)
                .map(|nla| nla.and_then(|n| NetdevAttr::parse(&n)))
                .collect::<Result<Vec<_>, _>>(),
            "netdev message",
        )?;
        Ok(NetdevMsg {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// What the `netdev` family says about one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevFeatures {
    pub ifindex: u32,
    pub xdp_features: u64,
    /// Linux 6.6+.
    pub zc_max_segs: Option<u32>,
    pub rx_metadata: Option<u64>,
    /// Linux 6.8+.
    pub xsk_features: Option<u64>,
}

impl DevFeatures {
    pub fn from_attrs(attrs: &[NetdevAttr]) -> DevFeatures {
        let mut d = DevFeatures::default();
        for a in attrs {
            match a {
                NetdevAttr::Ifindex(i) => d.ifindex = *i,
                NetdevAttr::XdpFeatures(f) => d.xdp_features = *f,
                NetdevAttr::XdpZcMaxSegs(n) => d.zc_max_segs = Some(*n),
                NetdevAttr::XdpRxMetadataFeatures(f) => d.rx_metadata = Some(*f),
                NetdevAttr::XskFeatures(f) => d.xsk_features = Some(*f),
                NetdevAttr::Other(_) => {}
            }
        }
        d
    }
}

/// A generic netlink socket with the `netdev` family resolved.
pub struct Netdev {
    sock: Socket,
    family: u16,
    seq: u32,
}

/// Why the `netdev` family could not be used.
#[derive(Debug)]
pub enum NetdevUnavailable {
    /// The controller does not know the family: Linux before 6.3.
    NoFamily,
    Error(anyhow::Error),
}

impl Netdev {
    pub fn open() -> Result<Netdev, NetdevUnavailable> {
        let mut sock =
            open(NETLINK_GENERIC, "generic netlink").map_err(NetdevUnavailable::Error)?;
        let mut get = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(NetdevMsg::family_name().into())],
        });
        get.finalize();
        let answer = match transact(
            &mut sock,
            get,
            false,
            1,
            "resolving the generic netlink family netdev",
        ) {
            Ok(a) => a,
            Err(e) if crate::xfrm::netlink::is_errno(&e, libc::ENOENT) => {
                return Err(NetdevUnavailable::NoFamily);
            }
            Err(e) => return Err(NetdevUnavailable::Error(e)),
        };
        let family = answer
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(NetdevUnavailable::NoFamily)?;
        Ok(Netdev {
            sock,
            family,
            seq: 1,
        })
    }

    /// `NETDEV_CMD_DEV_GET` for one device of the calling thread's namespace.
    pub fn dev_get(&mut self, ifindex: u32) -> Result<DevFeatures> {
        let mut m = GenlMessage::from_payload(NetdevMsg {
            cmd: NETDEV_CMD_DEV_GET,
            attrs: vec![NetdevAttr::Ifindex(ifindex)],
        });
        m.set_resolved_family_id(self.family);
        self.seq += 1;
        let answer = transact(
            &mut self.sock,
            m,
            false,
            self.seq,
            &format!("netdev dev-get of ifindex {ifindex}"),
        )?;
        let msg = answer
            .into_iter()
            .next()
            .with_context(|| format!("netdev dev-get of ifindex {ifindex}: empty answer"))?;
        Ok(DevFeatures::from_attrs(&msg.payload.attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkBuffer;

    /// An `RTM_NEWLINK` for ifindex 7 "veth-w" with a native XDP program (id 42): the
    /// attribute bytes as the kernel lays them out (rtnl_fill_ifinfo, rtnl_xdp_fill).
    fn newlink_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        // nlmsghdr: len (patched), type RTM_NEWLINK (16), flags, seq 1, pid 0
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&16u16.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        // ifinfomsg: family, pad, type (ARPHRD_ETHER), index 7, flags, change
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&7i32.to_ne_bytes());
        b.extend_from_slice(&0x1043u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        // IFLA_IFNAME (3) "veth-w\0", padded to 4
        b.extend_from_slice(&11u16.to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        b.extend_from_slice(b"veth-w\0\0");
        // IFLA_XDP (43 | NLA_F_NESTED): ATTACHED (2) = DRV (1), PROG_ID (4) = 42,
        // DRV_PROG_ID (5) = 42
        let mut x = Vec::new();
        x.extend_from_slice(&5u16.to_ne_bytes());
        x.extend_from_slice(&2u16.to_ne_bytes());
        x.extend_from_slice(&[1, 0, 0, 0]);
        for kind in [4u16, 5] {
            x.extend_from_slice(&8u16.to_ne_bytes());
            x.extend_from_slice(&kind.to_ne_bytes());
            x.extend_from_slice(&42u32.to_ne_bytes());
        }
        b.extend_from_slice(&((4 + x.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&(43u16 | 0x8000).to_ne_bytes());
        b.extend_from_slice(&x);
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn newlink_with_native_xdp() {
        let b = newlink_bytes();
        NetlinkBuffer::new_checked(&b[..]).unwrap();
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload else {
            panic!("not a NewLink: {:?}", m.payload);
        };
        assert_eq!(
            link_of(&l),
            Link {
                index: 7,
                name: "veth-w".into(),
                xdp: vec![(XdpMode::Native, 42)],
            }
        );
    }

    #[test]
    fn link_without_per_mode_ids() {
        // Only IFLA_XDP_PROG_ID and IFLA_XDP_ATTACHED = SKB.
        let mut l = LinkMessage::default();
        l.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(9),
            ]),
        ];
        assert_eq!(link_of(&l).xdp, vec![(XdpMode::Generic, 9)]);
        let mut none = LinkMessage::default();
        none.attributes = vec![LinkAttribute::Xdp(vec![LinkXdp::Attached(
            XdpAttached::None,
        )])];
        assert!(link_of(&none).xdp.is_empty());
    }

    #[test]
    fn netdev_dev_get_answer() {
        // genlmsghdr (cmd DEV_GET, version 1) + IFINDEX 5 + XDP_FEATURES (basic, redirect,
        // rx-sg) + XDP_ZC_MAX_SEGS 1 + an attribute from a newer kernel (99).
        let mut b = vec![NETDEV_CMD_DEV_GET, 1, 0, 0];
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&12u16.to_ne_bytes());
        b.extend_from_slice(&3u16.to_ne_bytes());
        b.extend_from_slice(&0x23u64.to_ne_bytes());
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&4u16.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&99u16.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        let m = GenlMessage::<NetdevMsg>::parse_with_param(&b, 0x20).unwrap();
        let d = DevFeatures::from_attrs(&m.payload.attrs);
        assert_eq!(
            d,
            DevFeatures {
                ifindex: 5,
                xdp_features: 0x23,
                zc_max_segs: Some(1),
                rx_metadata: None,
                xsk_features: None,
            }
        );
        assert_eq!(xdp_feature_names(0x23), ["basic", "redirect", "rx-sg"]);
        assert_eq!(
            xdp_feature_names(XDP_ACT_XSK_ZEROCOPY | XDP_ACT_NDO_XMIT),
            ["ndo-xmit", "xsk-zerocopy"]
        );
    }

    #[test]
    fn netdev_request_bytes() {
        // What DEV_GET puts on the wire: the genl header then IFINDEX as a u32 attribute.
        let mut m = GenlMessage::from_payload(NetdevMsg {
            cmd: NETDEV_CMD_DEV_GET,
            attrs: vec![NetdevAttr::Ifindex(5)],
        });
        m.set_resolved_family_id(0x20);
        let mut buf = vec![0u8; Emitable::buffer_len(&m)];
        m.emit(&mut buf);
        let mut want = vec![1, 1, 0, 0, 8, 0, 1, 0];
        want.extend_from_slice(&5u32.to_ne_bytes());
        assert_eq!(buf, want);
        assert_eq!(m.family_id(), 0x20);
    }
}
