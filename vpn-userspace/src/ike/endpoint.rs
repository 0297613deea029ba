//! The IKEv2 protocol core (RFC 7296), sans-IO: datagrams in through [`Endpoint::handle`],
//! datagrams out through [`Endpoint::poll_transmit`], timers through
//! [`Endpoint::poll_timeout`] / [`Endpoint::handle_timeout`], and what the data plane must do
//! through [`Endpoint::poll_event`]. No sockets, no clock: `now` is always passed in, so two
//! endpoints can be run against each other in memory with simulated time.
//!
//! Scope: PSK authentication, IKE_SA_INIT with cookies and INVALID_KE_PAYLOAD, IKE_AUTH
//! with one CHILD_SA, CREATE_CHILD_SA rekeying of CHILD_SAs (with PFS) and of the IKE SA,
//! INFORMATIONAL Delete and liveness checks, retransmission, NAT-T. Message-ID window 1.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use super::{
    conn::{ConnConfig, DpdAction, Encap, Identity, Initiator},
    crypto::{
        self, DhGroup, DhSecret, IkeSaKeys, IkeSuite, SkCipher, child_keymat, ct_eq,
        derive_ike_keys, psk_auth, signed_octets, skeyseed, skeyseed_rekey,
    },
    limits::{CookieCheck, CookieJar, DhBucket, HalfOpen, LimitStats, Limits},
    proposal::{self, EspSuite},
    ts,
    wire::{
        self, Auth, AuthMethod, Delete, EncodeError, ExchangeType, Header, Id, Ke, Message, Notify,
        NotifyType, Payload, PayloadType, ProtocolId, RawPayload, flags,
    },
};
use crate::{
    dataplane::worker::Prefix,
    esp::{Cipher, SaKey},
};

pub type ConnId = usize;
pub type ChildId = u64;

/// Endpoint-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our IKE port and the NAT-T port (500 and 4500; tests may use others).
    pub ike_port: u16,
    pub natt_port: u16,
    /// Half-open IKE SAs above which IKE_SA_INIT requests must return a cookie (RFC 7296
    /// 2.6; strongSwan's default is 30).
    pub cookie_threshold: usize,
    /// A half-open IKE SA is forgotten after this long.
    pub half_open_timeout: Duration,
    /// First retransmission after this long, doubling each time (RFC 7296 2.1).
    pub retransmit_base: Duration,
    pub retransmit_tries: u32,
    /// How long a rekeyed SA's inbound half stays installed after it is deleted, for
    /// packets in flight.
    pub overlap: Duration,
    /// NAT keepalive interval (RFC 3948 4).
    pub keepalive: Duration,
    /// What one peer may cost (`[ike.limits]`).
    pub limits: Limits,
    /// Prefixes per side of one CHILD_SA, after narrowing (`[ike] max_selectors`): beyond
    /// it a CHILD_SA is refused (TS_UNACCEPTABLE as responder).
    pub max_selectors: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            ike_port: 500,
            natt_port: 4500,
            cookie_threshold: 30,
            half_open_timeout: Duration::from_secs(30),
            retransmit_base: Duration::from_secs(2),
            retransmit_tries: 5,
            overlap: Duration::from_secs(2),
            keepalive: Duration::from_secs(20),
            limits: Limits::default(),
            max_selectors: 16,
        }
    }
}

/// A datagram to send: `data` is the exact UDP payload (with the non-ESP marker on the
/// NAT-T port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// A negotiated CHILD_SA, as the data plane installs it.
#[derive(Debug)]
pub struct ChildSa {
    pub id: ChildId,
    pub conn: ConnId,
    pub spi_in: u32,
    pub spi_out: u32,
    pub cipher: Cipher,
    pub esn: bool,
    pub key_in: SaKey,
    pub key_out: SaKey,
    pub local: IpAddr,
    pub peer: IpAddr,
    /// (our port, peer port) when ESP is UDP-encapsulated.
    pub udp_encap: Option<(u16, u16)>,
    pub local_ts: Vec<Prefix>,
    pub peer_ts: Vec<Prefix>,
    /// The CHILD_SA this one replaces (rekey).
    pub replaces: Option<ChildId>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConnStatus {
    Down,
    Connecting,
    Active,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Event {
    /// Install the inbound half (XDP SPI entry, replay window, worker state).
    InstallInbound(ChildSa),
    /// Start sending on this CHILD_SA: outbound state in, policies switched to it (again,
    /// if it was active before and another CHILD_SA took the policies meanwhile).
    ActivateOutbound { conn: ConnId, child: ChildId },
    /// Remove the CHILD_SA entirely (after the overlap, for rekeyed ones).
    Remove { conn: ConnId, child: ChildId },
    /// The connection changed state; `reason` is for the log and the operator.
    Status {
        conn: ConnId,
        status: ConnStatus,
        reason: String,
    },
    /// Something went wrong that changes no state the shell keeps (e.g. a message of ours
    /// that could not be encoded): for the log only.
    Warning {
        conn: Option<ConnId>,
        message: String,
    },
}

/// Counters for the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub sent: u64,
    pub retransmits: u64,
    pub dropped_malformed: u64,
    pub dropped_integrity: u64,
    pub dropped_unknown_spi: u64,
    pub dropped_no_conn: u64,
    pub dropped_unexpected: u64,
    pub cookies_sent: u64,
    pub ike_established: u64,
    pub child_established: u64,
    pub child_rekeyed: u64,
    pub ike_rekeyed: u64,
    pub auth_failed: u64,
    pub dpd_dead: u64,
    /// IKE_SA_INIT requests refused for their key exchange: another group than ours
    /// (INVALID_KE_PAYLOAD), or data that is no public value of the group (INVALID_SYNTAX).
    pub rejected_ke: u64,
    /// Messages of ours that could not be encoded (a field too long): the exchange was
    /// abandoned instead.
    pub encode_errors: u64,
    /// Limits hit (`[ike.limits]`).
    pub limits: LimitStats,
    /// CHILD_SAs refused because a side's selectors make more than `max_selectors`
    /// prefixes (TS_UNACCEPTABLE as responder, the exchange failed as initiator).
    pub ts_over_limit: u64,
    /// Calls into the core that panicked, caught by the shell (a bug; the process lives on).
    pub panics: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum IkeState {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open).
    HalfOpen,
    Established,
    /// Replaced by a rekey or being deleted: no new exchanges.
    Closing,
}

/// A request of ours waiting to be sent or answered.
enum Pending {
    Init,
    Auth {
        spi_in: u32,
    },
    RekeyChild {
        old: ChildId,
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
    },
    RekeyIke {
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhSecret,
    },
    /// A new CHILD_SA on an established IKE SA (the previous one was deleted).
    CreateChild {
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
    },
    DeleteChildren(Vec<ChildId>),
    DeleteIke,
    Dpd,
}

impl Pending {
    fn name(&self) -> &'static str {
        match self {
            Pending::Init => "IKE_SA_INIT",
            Pending::Auth { .. } => "IKE_AUTH",
            Pending::RekeyChild { .. } => "CREATE_CHILD_SA (rekey CHILD_SA)",
            Pending::RekeyIke { .. } => "CREATE_CHILD_SA (rekey IKE_SA)",
            Pending::CreateChild { .. } => "CREATE_CHILD_SA (new CHILD_SA)",
            Pending::DeleteChildren(_) => "INFORMATIONAL (delete CHILD_SA)",
            Pending::DeleteIke => "INFORMATIONAL (delete IKE_SA)",
            Pending::Dpd => "INFORMATIONAL (liveness)",
        }
    }
}

struct Inflight {
    msg_id: u32,
    packet: Vec<u8>,
    first_sent: Instant,
    next_retx: Instant,
    tries: u32,
    kind: Pending,
}

struct Keys {
    sk_d: Zeroizing<Vec<u8>>,
    /// SK_p of our side and of the peer's side.
    sk_p_local: Zeroizing<Vec<u8>>,
    sk_p_peer: Zeroizing<Vec<u8>>,
    out: SkCipher,
    inb: SkCipher,
}

struct IkeSa {
    conn: ConnId,
    spi_i: u64,
    spi_r: u64,
    /// We are the original initiator of this IKE SA (the I flag, key roles).
    initiator: bool,
    state: IkeState,
    suite: Option<IkeSuite>,
    keys: Option<Keys>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    dh: Option<DhSecret>,
    ke_group: Option<DhGroup>,
    cookie: Option<Vec<u8>>,
    /// IKE_SA_INIT request and response, signed by AUTH.
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    local: SocketAddr,
    remote: SocketAddr,
    nat_local: bool,
    nat_peer: bool,
    next_msg_id: u32,
    inflight: Option<Inflight>,
    queue: VecDeque<Pending>,
    peer_expect: u32,
    last_resp: Option<(u32, Vec<u8>)>,
    last_heard: Instant,
    created: Instant,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    next_keepalive: Option<Instant>,
    /// Peer-initiated IKE rekey answered on this SA (new SA's local SPI, min nonce), for
    /// collision handling (RFC 7296 2.8.2).
    peer_rekey: Option<(u64, Vec<u8>)>,
    /// Replaced by a rekey (ours or the peer's): no new exchanges, no timers but deletion.
    rekeyed: bool,
}

impl IkeSa {
    fn encap(&self) -> bool {
        self.nat_local || self.nat_peer
    }

    /// Our Delete of this IKE SA is queued or in flight: it still answers and retransmits
    /// until the peer confirms, but carries nothing new.
    fn closing(&self) -> bool {
        self.queue.iter().any(|p| matches!(p, Pending::DeleteIke))
            || self
                .inflight
                .as_ref()
                .is_some_and(|i| matches!(i.kind, Pending::DeleteIke))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ChildState {
    Active,
    /// Responder side of a rekey: inbound installed, outbound waits for the peer to delete
    /// the old SA (or for the collision to be settled).
    InboundOnly,
    /// Replaced by a newer CHILD_SA; deleted next.
    Rekeyed,
    Deleting,
}

struct Child {
    conn: ConnId,
    ike: u64,
    spi_in: u32,
    spi_out: u32,
    suite: EspSuite,
    state: ChildState,
    local_ts: Vec<Prefix>,
    peer_ts: Vec<Prefix>,
    rekey_at: Instant,
    expire_at: Instant,
    /// The lowest nonce of the exchange that created it (collisions).
    min_nonce: Vec<u8>,
    /// The peer's rekey of this child that we answered (its new child), for collisions.
    peer_rekey: Option<ChildId>,
    replaces: Option<ChildId>,
    rekey_requested: bool,
    activate_by: Option<Instant>,
    created: Instant,
}

/// A CHILD_SA as the operator sees it (no keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildView {
    pub id: ChildId,
    pub conn: ConnId,
    pub spi_in: u32,
    pub spi_out: u32,
    pub cipher: Cipher,
    pub esn: bool,
    pub pfs: Option<DhGroup>,
    pub local_ts: Vec<Prefix>,
    pub peer_ts: Vec<Prefix>,
    pub udp_encap: Option<(u16, u16)>,
    pub state: &'static str,
    pub age: Duration,
    pub rekey_in: Duration,
    pub expires_in: Duration,
}

/// An IKE SA as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeView {
    pub conn: ConnId,
    pub spi_i: u64,
    pub spi_r: u64,
    pub initiator: bool,
    pub state: &'static str,
    pub suite: Option<IkeSuite>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub nat: bool,
    pub age: Duration,
}

struct ConnRuntime {
    cfg: ConnConfig,
    /// Taken out by a configuration reload (ids stay stable).
    removed: bool,
    status: ConnStatus,
    /// Next (re)initiation for Restart after a failure, with backoff.
    retry_at: Option<Instant>,
    failures: u32,
    /// The reason of the last status event.
    reason: String,
}

pub struct Endpoint {
    settings: Settings,
    conns: Vec<ConnRuntime>,
    /// Ordered maps: the order in which SAs are visited is the same in every run, so a
    /// simulated scenario replays exactly from its seed.
    sas: BTreeMap<u64, IkeSa>,
    /// Responder: the half-open IKE SAs, counted per peer.
    half_open: HalfOpen,
    children: BTreeMap<ChildId, Child>,
    next_child: ChildId,
    /// Removals waiting for the overlap to pass.
    removals: Vec<(Instant, ConnId, ChildId)>,
    cookies: CookieJar,
    dh_bucket: DhBucket,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    pub stats: Stats,
    /// Tests only: the TSi and TSr every encrypted message of ours carries instead of the
    /// real ones (a peer that offers or answers whatever selectors it likes).
    #[cfg(test)]
    pub(crate) ts_override: Option<(Vec<wire::Ts>, Vec<wire::Ts>)>,
    /// Tests only: the next received datagram panics (the shell's last line of defence).
    #[cfg(test)]
    pub(crate) panic_on_receive: bool,
}

const NONCE_LEN: usize = 32;

/// An IKE_SA_INIT request as the DoS checks see it.
struct InitReq<'a> {
    local: SocketAddr,
    remote: SocketAddr,
    h: &'a Header,
    ni: &'a [u8],
}

fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    d.update(&spi_i.to_be_bytes());
    d.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => d.update(&a.octets()),
        IpAddr::V6(a) => d.update(&a.octets()),
    }
    d.update(&addr.port().to_be_bytes());
    d.finish().as_ref().to_vec()
}

fn jitter(max: Duration) -> Duration {
    let r = u32::from_be_bytes(crypto::random_bytes(4).try_into().expect("4 bytes"));
    max.mul_f64(r as f64 / u32::MAX as f64)
}

/// Soft (rekey) time for a hard lifetime: a margin of a tenth (at most 9 minutes, as
/// strongSwan's margintime) plus up to half the margin again at random.
fn rekey_time(now: Instant, life: Duration) -> Instant {
    let margin = (life / 10).min(Duration::from_secs(540));
    now + life - margin - jitter(margin / 2)
}

fn notify_of<'a>(payloads: &[RawPayload<'a>], t: NotifyType) -> Option<Notify<'a>> {
    payloads
        .iter()
        .filter(|p| p.ptype == PayloadType::NOTIFY)
        .filter_map(|p| Notify::parse(p.body).ok())
        .find(|n| n.ntype == t)
}

fn first_error<'a>(payloads: &[RawPayload<'a>]) -> Option<Notify<'a>> {
    payloads
        .iter()
        .filter(|p| p.ptype == PayloadType::NOTIFY)
        .filter_map(|p| Notify::parse(p.body).ok())
        .find(|n| n.ntype.is_error())
}

fn body_of<'a>(payloads: &[RawPayload<'a>], t: PayloadType) -> Option<&'a [u8]> {
    payloads.iter().find(|p| p.ptype == t).map(|p| p.body)
}

fn known_payload(t: PayloadType) -> bool {
    matches!(t.0, 33..=48 | 53)
}

/// The first unknown payload marked critical (RFC 7296 2.5).
fn unknown_critical(payloads: &[RawPayload<'_>]) -> Option<PayloadType> {
    payloads
        .iter()
        .find(|p| p.critical && !known_payload(p.ptype))
        .map(|p| p.ptype)
}

/// Our side's prefixes and the peer's.
type AcceptedTs = (Vec<Prefix>, Vec<Prefix>);

/// Initiator: the responder's TSi (our side) and TSr (the peer's), within what we offered
/// and the limit.
fn accept_ts(
    inner: &[RawPayload<'_>],
    local: &[Prefix],
    peer: &[Prefix],
    max: usize,
) -> Result<AcceptedTs, ts::Refused> {
    let parse = |t| {
        body_of(inner, t)
            .and_then(|b| wire::parse_ts(b).ok())
            .ok_or(ts::Refused::Outside)
    };
    let (tsi, tsr) = (parse(PayloadType::TSI)?, parse(PayloadType::TSR)?);
    Ok((ts::accept(&tsi, local, max)?, ts::accept(&tsr, peer, max)?))
}

fn nonce_ok(n: &[u8]) -> bool {
    (16..=256).contains(&n.len())
}

/// Splits CHILD_SA keying material: initiator-to-responder first (RFC 7296 2.17).
fn child_keys(
    cipher: Cipher,
    keymat: &[u8],
    we_initiated: bool,
) -> Result<(SaKey, SaKey), crate::esp::crypto::KeyError> {
    let n = cipher.keymat_len();
    let i2r = SaKey::from_keymat(cipher, &keymat[..n])?;
    let r2i = SaKey::from_keymat(cipher, &keymat[n..2 * n])?;
    Ok(if we_initiated { (r2i, i2r) } else { (i2r, r2i) })
}

impl Endpoint {
    pub fn new(settings: Settings) -> Endpoint {
        let l = &settings.limits;
        let cookies = CookieJar::new(
            Duration::from_secs(l.cookie_secret_lifetime),
            Duration::from_secs(l.cookie_grace),
        );
        let dh_bucket = DhBucket::new(l.dh_per_second, l.dh_burst);
        Endpoint {
            settings,
            conns: Vec::new(),
            sas: BTreeMap::new(),
            half_open: HalfOpen::default(),
            children: BTreeMap::new(),
            next_child: 1,
            removals: Vec::new(),
            cookies,
            dh_bucket,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            #[cfg(test)]
            ts_override: None,
            #[cfg(test)]
            panic_on_receive: false,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds a connection; bi-directional ones are initiated by [`Endpoint::start`].
    pub fn add_conn(&mut self, cfg: ConnConfig) -> ConnId {
        self.conns.push(ConnRuntime {
            cfg,
            removed: false,
            status: ConnStatus::Down,
            retry_at: None,
            failures: 0,
            reason: String::new(),
        });
        self.conns.len() - 1
    }

    pub fn conn(&self, id: ConnId) -> &ConnConfig {
        &self.conns[id].cfg
    }

    /// Takes a connection out (configuration reload): its SAs are deleted politely, its id
    /// is never reused.
    pub fn remove_conn(&mut self, id: ConnId, now: Instant) {
        self.terminate(id, now);
        let c = &mut self.conns[id];
        c.cfg.admin_up = false;
        c.removed = true;
    }

    pub fn is_removed(&self, id: ConnId) -> bool {
        self.conns[id].removed
    }

    /// The live connection of this name.
    pub fn conn_by_name(&self, name: &str) -> Option<ConnId> {
        self.conns
            .iter()
            .position(|c| !c.removed && c.cfg.name == name)
    }

    pub fn child_view(&self, id: ChildId, now: Instant) -> Option<ChildView> {
        let c = self.children.get(&id)?;
        let sa = self.sas.get(&c.ike);
        Some(ChildView {
            id,
            conn: c.conn,
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            cipher: c.suite.cipher,
            esn: c.suite.esn,
            pfs: c.suite.dh,
            local_ts: c.local_ts.clone(),
            peer_ts: c.peer_ts.clone(),
            udp_encap: sa
                .filter(|s| s.encap())
                .map(|s| (s.local.port(), s.remote.port())),
            state: match c.state {
                ChildState::Active => "ACTIVE",
                ChildState::InboundOnly => "INBOUND-ONLY",
                ChildState::Rekeyed => "REKEYED",
                ChildState::Deleting => "DELETING",
            },
            age: now.saturating_duration_since(c.created),
            rekey_in: c.rekey_at.saturating_duration_since(now),
            expires_in: c.expire_at.saturating_duration_since(now),
        })
    }

    pub fn ike_views(&self, conn: ConnId, now: Instant) -> Vec<IkeView> {
        let mut v: Vec<IkeView> = self
            .sas
            .values()
            .filter(|s| s.conn == conn)
            .map(|s| IkeView {
                conn,
                spi_i: s.spi_i,
                spi_r: s.spi_r,
                initiator: s.initiator,
                state: match (s.state, s.rekeyed) {
                    (_, true) => "REKEYED",
                    (IkeState::InitSent, _) => "IKE_SA_INIT SENT",
                    (IkeState::AuthSent, _) => "IKE_AUTH SENT",
                    (IkeState::HalfOpen, _) => "HALF-OPEN",
                    (IkeState::Established, _) => "ESTABLISHED",
                    (IkeState::Closing, _) => "CLOSING",
                },
                suite: s.suite,
                local: s.local,
                remote: s.remote,
                nat: s.encap(),
                age: now.saturating_duration_since(s.created),
            })
            .collect();
        v.sort_by_key(|s| s.spi_i);
        v
    }

    pub fn conn_status(&self, id: ConnId) -> ConnStatus {
        self.conns[id].status
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Initiates every administratively up, bi-directional connection.
    pub fn start(&mut self, now: Instant) {
        for id in 0..self.conns.len() {
            let c = &self.conns[id].cfg;
            if c.admin_up && c.initiator == Initiator::BiDirectional {
                self.initiate(id, now);
            }
        }
    }

    /// Number of IKE SAs (all states) and of established ones.
    pub fn ike_sa_count(&self) -> (usize, usize) {
        let est = self
            .sas
            .values()
            .filter(|s| s.state == IkeState::Established)
            .count();
        (self.sas.len(), est)
    }

    pub fn child_count(&self) -> usize {
        self.children.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Reports a change of state, or a new reason for being down. Nothing else: a failure
    /// repeated (a peer retrying with the same wrong proposal, or anyone spoofing its
    /// IKE_SA_INIT) must not cost a log line, a rewrite of connections.json and data-plane
    /// updates each time.
    fn status(&mut self, conn: ConnId, status: ConnStatus, reason: impl Into<String>) {
        let reason = reason.into();
        let c = &mut self.conns[conn];
        if c.status == status && (status != ConnStatus::Down || c.reason == reason) {
            return;
        }
        c.status = status;
        c.reason.clone_from(&reason);
        self.events.push_back(Event::Status {
            conn,
            status,
            reason,
        });
    }

    // -----------------------------------------------------------------------------------
    // Operator actions

    /// Starts IKE_SA_INIT for a connection (no-op if it already has an IKE SA).
    pub fn initiate(&mut self, conn: ConnId, now: Instant) {
        if let Some(spi) = self.established_sa(conn) {
            // The IKE SA survived its CHILD_SA (deleted by the peer, or refused): a new one.
            // One being deleted does not count (`conn up` while its Delete is on its way
            // was a no-op; found by `random_interleavings_always_converge`).
            let live = self.children.values().any(|c| {
                c.conn == conn && matches!(c.state, ChildState::Active | ChildState::InboundOnly)
            });
            if !live {
                self.create_child(spi, now);
            }
            return;
        }
        if self
            .sas
            .values()
            .any(|s| s.conn == conn && s.state != IkeState::Closing && !s.closing())
        {
            return;
        }
        let cfg = &self.conns[conn].cfg;
        let Some(group) = cfg.ike.first().and_then(|p| p.dh.first().copied()) else {
            return;
        };
        let spi_i = self.new_ike_spi();
        let local = SocketAddr::new(cfg.local, self.settings.ike_port);
        let remote = SocketAddr::new(cfg.peer, self.settings.ike_port);
        let sa = IkeSa {
            conn,
            spi_i,
            spi_r: 0,
            initiator: true,
            state: IkeState::InitSent,
            suite: None,
            keys: None,
            ni: crypto::random_bytes(NONCE_LEN),
            nr: vec![],
            dh: None,
            ke_group: Some(group),
            cookie: None,
            init_req: vec![],
            init_resp: vec![],
            local,
            remote,
            nat_local: false,
            nat_peer: false,
            next_msg_id: 0,
            inflight: None,
            queue: VecDeque::new(),
            peer_expect: 0,
            last_resp: None,
            last_heard: now,
            created: now,
            rekey_at: None,
            expire_at: None,
            next_keepalive: None,
            peer_rekey: None,
            rekeyed: false,
        };
        self.sas.insert(spi_i, sa);
        self.conns[conn].retry_at = None;
        self.status(conn, ConnStatus::Connecting, "initiating");
        self.send_init(spi_i, now);
    }

    /// Deletes a connection's SAs politely (INFORMATIONAL Delete of the IKE SA).
    pub fn terminate(&mut self, conn: ConnId, now: Instant) {
        self.conns[conn].retry_at = None;
        let spis: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for spi in spis {
            let est = self.sas[&spi].state == IkeState::Established;
            if est {
                self.request(spi, Pending::DeleteIke, now);
            } else {
                self.drop_ike(spi, now, None);
            }
        }
        self.remove_conn_children(conn);
        self.status(conn, ConnStatus::Down, "terminated by operator");
    }

    pub fn set_admin_up(&mut self, conn: ConnId, up: bool, now: Instant) {
        self.conns[conn].cfg.admin_up = up;
        if up {
            if self.conns[conn].cfg.initiator == Initiator::BiDirectional {
                self.initiate(conn, now);
            }
        } else {
            self.terminate(conn, now);
        }
    }

    /// Rekeys a CHILD_SA now (the shell calls this when packet/byte counts or the sequence
    /// number near their limits).
    pub fn rekey_child(&mut self, child: ChildId, now: Instant) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        if c.state != ChildState::Active || c.rekey_requested {
            return;
        }
        c.rekey_requested = true;
        let ike = c.ike;
        let spi_in = self.new_esp_spi();
        self.request(
            ike,
            Pending::RekeyChild {
                old: child,
                spi_in,
                ni: vec![],
                dh: None,
            },
            now,
        );
    }

    fn create_child(&mut self, spi: u64, now: Instant) {
        let Some(sa) = self.sas.get(&spi) else { return };
        let queued = sa
            .queue
            .iter()
            .any(|p| matches!(p, Pending::CreateChild { .. }))
            || matches!(
                sa.inflight.as_ref().map(|i| &i.kind),
                Some(Pending::CreateChild { .. })
            );
        if queued {
            return;
        }
        let conn = sa.conn;
        let spi_in = self.new_esp_spi();
        self.status(conn, ConnStatus::Connecting, "creating a CHILD_SA");
        self.request(
            spi,
            Pending::CreateChild {
                spi_in,
                ni: vec![],
                dh: None,
            },
            now,
        );
    }

    /// Deletes one CHILD_SA (INFORMATIONAL Delete); the IKE SA stays.
    pub fn delete_child(&mut self, child: ChildId, now: Instant) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        if !matches!(c.state, ChildState::Active | ChildState::InboundOnly) {
            return;
        }
        c.state = ChildState::Deleting;
        let ike = c.ike;
        self.request(ike, Pending::DeleteChildren(vec![child]), now);
    }

    /// Rekeys the IKE SA of a connection now.
    pub fn rekey_ike(&mut self, conn: ConnId, now: Instant) {
        if let Some(spi) = self.established_sa(conn) {
            self.start_ike_rekey(spi, now);
        }
    }

    fn start_ike_rekey(&mut self, spi: u64, now: Instant) {
        let Some(sa) = self.sas.get(&spi) else { return };
        let Some(group) = sa.suite.map(|s| s.dh) else {
            return;
        };
        if sa
            .queue
            .iter()
            .any(|p| matches!(p, Pending::RekeyIke { .. }))
            || matches!(
                sa.inflight.as_ref().map(|i| &i.kind),
                Some(Pending::RekeyIke { .. })
            )
        {
            return;
        }
        let Ok(dh) = DhSecret::generate(group) else {
            return;
        };
        let new_spi = self.new_ike_spi();
        self.request(
            spi,
            Pending::RekeyIke {
                new_spi,
                ni: crypto::random_bytes(NONCE_LEN),
                dh,
            },
            now,
        );
    }

    /// Per-CHILD_SA usage from the data plane: rekeys past the packet/byte lifetimes or when
    /// the outbound sequence number nears its end (2^32 without ESN).
    pub fn child_usage(
        &mut self,
        child: ChildId,
        packets: u64,
        bytes: u64,
        seq_out: u64,
        now: Instant,
    ) {
        let Some(c) = self.children.get(&child) else {
            return;
        };
        let lt = self.conns[c.conn].cfg.lifetimes;
        let seq_limit: u64 = if c.suite.esn {
            u64::MAX - (1 << 32)
        } else {
            (1u64 << 32) - (1 << 24)
        };
        let over = lt.child_packets.is_some_and(|l| packets >= l - l / 10)
            || lt.child_bytes.is_some_and(|l| bytes >= l - l / 10)
            || seq_out >= seq_limit;
        if over {
            self.rekey_child(child, now);
        }
    }

    /// The peer's liveness seen in the data plane (ESP received): postpones DPD.
    pub fn child_activity(&mut self, child: ChildId, now: Instant) {
        if let Some(c) = self.children.get(&child)
            && let Some(sa) = self.sas.get_mut(&c.ike)
        {
            sa.last_heard = sa.last_heard.max(now);
        }
    }

    /// The established IKE SA of a connection.
    fn established_sa(&self, conn: ConnId) -> Option<u64> {
        self.sas
            .iter()
            .find(|(_, s)| s.conn == conn && s.state == IkeState::Established && !s.closing())
            .map(|(k, _)| *k)
    }

    /// Live children of a connection (for the operator).
    pub fn conn_children(&self, conn: ConnId) -> Vec<(ChildId, u32, u32)> {
        let mut v: Vec<_> = self
            .children
            .iter()
            .filter(|(_, c)| c.conn == conn)
            .map(|(id, c)| (*id, c.spi_in, c.spi_out))
            .collect();
        v.sort();
        v
    }

    fn new_ike_spi(&self) -> u64 {
        loop {
            let s = crypto::random_spi();
            if !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    fn new_esp_spi(&self) -> u32 {
        loop {
            let s = crypto::random_u32_nonzero();
            if s >= 256 && !self.children.values().any(|c| c.spi_in == s) {
                return s;
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Timers

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for sa in self.sas.values() {
            at(sa.inflight.as_ref().map(|i| i.next_retx));
            if !sa.rekeyed {
                at(sa.rekey_at);
            }
            at(sa.expire_at);
            at(sa.next_keepalive);
            if sa.state == IkeState::HalfOpen {
                at(Some(sa.created + self.settings.half_open_timeout));
            }
            if sa.state == IkeState::Established && sa.inflight.is_none() && !sa.rekeyed {
                let dpd = self.conns[sa.conn].cfg.dpd;
                if dpd.action != DpdAction::Disabled {
                    at(Some(sa.last_heard + dpd.interval));
                }
            }
        }
        for c in self.children.values() {
            if matches!(c.state, ChildState::Active) && !c.rekey_requested {
                at(Some(c.rekey_at));
            }
            at(Some(c.expire_at));
            at(c.activate_by);
        }
        for (when, _, _) in &self.removals {
            at(Some(*when));
        }
        for c in &self.conns {
            at(c.retry_at);
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Removals after the overlap.
        let mut due = vec![];
        self.removals.retain(|(when, conn, child)| {
            if *when <= now {
                due.push((*conn, *child));
                false
            } else {
                true
            }
        });
        for (conn, child) in due {
            if self.children.remove(&child).is_some() {
                self.events.push_back(Event::Remove { conn, child });
            }
        }
        // Responder-side rekeyed children whose peer never deleted the old SA.
        let late: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, c)| c.activate_by.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for id in late {
            self.activate(id);
        }
        // Retries of failed connections.
        for id in 0..self.conns.len() {
            if self.conns[id].retry_at.is_some_and(|t| t <= now) {
                self.conns[id].retry_at = None;
                self.initiate(id, now);
            }
        }
        // CHILD_SA lifetimes.
        let kids: Vec<(ChildId, bool, bool)> = self
            .children
            .iter()
            .map(|(k, c)| {
                (
                    *k,
                    c.state == ChildState::Active && !c.rekey_requested && c.rekey_at <= now,
                    c.expire_at <= now,
                )
            })
            .collect();
        for (id, rekey, expire) in kids {
            if expire {
                // Hard lifetime: the SA must not be used any more.
                if let Some(c) = self.children.get(&id) {
                    let (conn, ike) = (c.conn, c.ike);
                    self.children.get_mut(&id).expect("present").state = ChildState::Deleting;
                    if self
                        .sas
                        .get(&ike)
                        .is_some_and(|s| s.state == IkeState::Established)
                    {
                        self.request(ike, Pending::DeleteChildren(vec![id]), now);
                    }
                    self.children.remove(&id);
                    self.events.push_back(Event::Remove { conn, child: id });
                }
            } else if rekey {
                self.rekey_child(id, now);
            }
        }
        let spis: Vec<u64> = self.sas.keys().copied().collect();
        for spi in spis {
            self.sa_timers(spi, now);
        }
    }

    fn sa_timers(&mut self, spi: u64, now: Instant) {
        let settings = self.settings.clone();
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let conn = sa.conn;
        let dpd = self.conns[conn].cfg.dpd;
        if sa.state == IkeState::HalfOpen && now >= sa.created + settings.half_open_timeout {
            self.drop_ike(spi, now, None);
            return;
        }
        if sa.expire_at.is_some_and(|t| t <= now) {
            // Hard IKE lifetime without a successful rekey: start over.
            self.drop_ike(spi, now, Some("IKE_SA lifetime expired"));
            return;
        }
        if let Some(inf) = &mut sa.inflight
            && inf.next_retx <= now
        {
            let deadline = if dpd.action != DpdAction::Disabled && sa.state == IkeState::Established
            {
                now >= inf.first_sent + dpd.timeout
            } else {
                inf.tries >= settings.retransmit_tries
            };
            if deadline {
                let what = inf.kind.name();
                self.peer_dead(spi, now, what);
                return;
            }
            inf.tries += 1;
            let shift = inf.tries.min(6);
            inf.next_retx = now + settings.retransmit_base * (1 << shift);
            if dpd.action != DpdAction::Disabled && sa.state == IkeState::Established {
                inf.next_retx = inf.next_retx.min(inf.first_sent + dpd.timeout);
            }
            let packet = inf.packet.clone();
            let (src, dst) = (sa.local, sa.remote);
            self.stats.retransmits += 1;
            self.send(src, dst, packet);
        }
        let sa = self.sas.get_mut(&spi).expect("present");
        if sa.next_keepalive.is_some_and(|t| t <= now) {
            sa.next_keepalive = Some(now + settings.keepalive);
            let (src, dst) = (sa.local, sa.remote);
            self.transmits.push_back(Transmit {
                src,
                dst,
                data: vec![0xff],
            });
        }
        let sa = self.sas.get(&spi).expect("present");
        if sa.state == IkeState::Established && !sa.rekeyed {
            if sa.rekey_at.is_some_and(|t| t <= now) {
                self.sas.get_mut(&spi).expect("present").rekey_at = None;
                self.start_ike_rekey(spi, now);
            } else if dpd.action != DpdAction::Disabled
                && sa.inflight.is_none()
                && sa.queue.is_empty()
                && now >= sa.last_heard + dpd.interval
            {
                self.request(spi, Pending::Dpd, now);
            }
        }
    }

    /// No answer: DPD action (RFC 7296 2.4 and Neutron's dpd semantics).
    fn peer_dead(&mut self, spi: u64, now: Instant, what: &str) {
        let Some(sa) = self.sas.get(&spi) else { return };
        let conn = sa.conn;
        let established = sa.state == IkeState::Established;
        self.stats.dpd_dead += u64::from(established);
        let action = self.conns[conn].cfg.dpd.action;
        let reason = format!(
            "peer {} did not answer {what}: {}",
            sa.remote.ip(),
            if established {
                match action {
                    DpdAction::Hold => "dead peer, holding (protected traffic discarded)",
                    DpdAction::Clear | DpdAction::Disabled => "dead peer, SAs cleared",
                    DpdAction::Restart => "dead peer, restarting",
                }
            } else {
                "negotiation timed out"
            }
        );
        self.drop_ike(spi, now, Some(&reason));
    }

    /// Forgets an IKE SA and its children; `reason` makes the connection DOWN (with a
    /// restart scheduled for Restart connections and failed initiations).
    fn drop_ike(&mut self, spi: u64, now: Instant, reason: Option<&str>) {
        let Some(sa) = self.sas.remove(&spi) else {
            return;
        };
        self.half_open.remove(spi);
        let conn = sa.conn;
        let kids: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, c)| c.ike == spi)
            .map(|(k, _)| *k)
            .collect();
        for k in kids {
            self.children.remove(&k);
            self.events.push_back(Event::Remove { conn, child: k });
        }
        let Some(reason) = reason else { return };
        // Another IKE SA of the connection may still carry it (after a rekey, or a new one
        // brought up while this one was being deleted).
        if self
            .sas
            .values()
            .any(|s| s.conn == conn && s.state == IkeState::Established && !s.closing())
        {
            return;
        }
        self.status(conn, ConnStatus::Down, reason);
        let c = &mut self.conns[conn];
        let restart = c.cfg.admin_up
            && (c.cfg.dpd.action == DpdAction::Restart
                || (c.cfg.initiator == Initiator::BiDirectional
                    && sa.initiator
                    && sa.state != IkeState::Established));
        if restart {
            c.failures += 1;
            let backoff = Duration::from_secs(1 << c.failures.min(6));
            c.retry_at = Some(now + backoff.min(Duration::from_secs(60)));
        }
    }

    fn remove_conn_children(&mut self, conn: ConnId) {
        let kids: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, c)| c.conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for k in kids {
            self.children.remove(&k);
            self.events.push_back(Event::Remove { conn, child: k });
        }
    }

    // -----------------------------------------------------------------------------------
    // Sending

    fn send(&mut self, src: SocketAddr, dst: SocketAddr, mut data: Vec<u8>) {
        if src.port() == self.settings.natt_port {
            data.splice(0..0, [0u8; 4]);
        }
        self.stats.sent += 1;
        self.transmits.push_back(Transmit { src, dst, data });
    }

    /// A message of ours could not be encoded: counted and reported; the caller abandons the
    /// exchange (nothing of it is installed, and a request is not sent).
    fn encode_failed(&mut self, conn: Option<ConnId>, what: &str, e: &EncodeError) {
        self.stats.encode_errors += 1;
        self.events.push_back(Event::Warning {
            conn,
            message: format!("{what}: cannot encode the message ({e}); exchange abandoned"),
        });
    }

    /// Selectors past `max_selectors`: counted and reported (the caller refuses the CHILD_SA).
    fn ts_over_limit(&mut self, conn: ConnId, whose: &str) {
        self.stats.ts_over_limit += 1;
        let max = self.settings.max_selectors;
        self.events.push_back(Event::Warning {
            conn: Some(conn),
            message: format!(
                "{whose} traffic selectors make more than {max} prefixes per side ([ike] max_selectors): CHILD_SA refused"
            ),
        });
    }

    /// Initiator: the responder's selectors for a CHILD_SA of `conn` (not a rekey).
    fn accept_conn_ts(
        &self,
        conn: ConnId,
        inner: &[RawPayload<'_>],
    ) -> Result<AcceptedTs, ts::Refused> {
        let cfg = &self.conns[conn].cfg;
        accept_ts(
            inner,
            &cfg.local_ts,
            &cfg.peer_ts,
            self.settings.max_selectors,
        )
    }

    /// Queues a request on an IKE SA; sent at once if the window is free.
    fn request(&mut self, spi: u64, p: Pending, now: Instant) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        sa.queue.push_back(p);
        self.pump(spi, now);
    }

    fn pump(&mut self, spi: u64, now: Instant) {
        loop {
            let Some(sa) = self.sas.get_mut(&spi) else {
                return;
            };
            if sa.inflight.is_some() || sa.state != IkeState::Established {
                return;
            }
            let Some(p) = sa.queue.pop_front() else {
                return;
            };
            if let Some(p) = self.build_request(spi, p, now) {
                let (packet, kind, msg_id) = p;
                let sa = self.sas.get_mut(&spi).expect("present");
                sa.inflight = Some(Inflight {
                    msg_id,
                    packet: packet.clone(),
                    first_sent: now,
                    next_retx: now + self.settings.retransmit_base,
                    tries: 0,
                    kind,
                });
                let (src, dst) = (sa.local, sa.remote);
                self.send(src, dst, packet);
                return;
            }
        }
    }

    /// Encrypts a message on an established IKE SA. Nothing is consumed (no IV) when it
    /// cannot be encoded.
    fn seal(
        &mut self,
        spi: u64,
        exchange: ExchangeType,
        response: bool,
        msg_id: u32,
        payloads: &[Payload<'_>],
    ) -> Result<Vec<u8>, EncodeError> {
        #[cfg(test)]
        let replaced: Vec<Payload<'_>>;
        #[cfg(test)]
        let payloads = match &self.ts_override {
            Some((tsi, tsr)) => {
                replaced = payloads
                    .iter()
                    .map(|p| match p {
                        Payload::TsI(_) => Payload::TsI(tsi.clone()),
                        Payload::TsR(_) => Payload::TsR(tsr.clone()),
                        p => p.clone(),
                    })
                    .collect();
                &replaced[..]
            }
            None => payloads,
        };
        let sa = self.sas.get_mut(&spi).expect("caller checked");
        let keys = sa.keys.as_mut().expect("established");
        let mut inner = Vec::new();
        let first = wire::emit_chain(payloads, &mut inner)?;
        let f = if sa.initiator { flags::INITIATOR } else { 0 };
        let ids = (sa.spi_i, sa.spi_r, exchange, f, msg_id);
        seal_message(&mut keys.out, ids, response, first, &inner)
    }

    /// Fuzzing only: a message on `conn`'s established IKE SA as the peer would send it,
    /// sealed with the peer's keys (our inbound ones): a request with the message ID we expect
    /// next, or the response to our request in flight. `first` and `chain` are the plaintext
    /// payload chain, taken as given. Returns (our address, the peer's, the datagram) for
    /// [`Endpoint::handle`], or None without such an SA (or, for a response, a request).
    #[doc(hidden)]
    pub fn forge_from_peer(
        &mut self,
        conn: ConnId,
        exchange: ExchangeType,
        response: bool,
        first: PayloadType,
        chain: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let spi = self.established_sa(conn)?;
        let sa = self.sas.get_mut(&spi)?;
        let msg_id = if response {
            sa.inflight.as_ref()?.msg_id
        } else {
            sa.peer_expect
        };
        // The peer's role: the I flag is set when we are not the original initiator.
        let f = if sa.initiator { 0 } else { flags::INITIATOR };
        let ids = (sa.spi_i, sa.spi_r, exchange, f, msg_id);
        let mut data =
            seal_message(&mut sa.keys.as_mut()?.inb, ids, response, first, chain).ok()?;
        if sa.local.port() == self.settings.natt_port {
            data.splice(0..0, [0u8; 4]);
        }
        Some((sa.local, sa.remote, data))
    }

    /// Answers a request. False when the answer cannot be encoded: then nothing is sent (the
    /// request stays unanswered, the peer's retransmission is handled afresh), it is counted
    /// and reported, and the caller must not act on the exchange.
    fn respond(
        &mut self,
        spi: u64,
        exchange: ExchangeType,
        msg_id: u32,
        payloads: &[Payload<'_>],
    ) -> bool {
        let packet = match self.seal(spi, exchange, true, msg_id, payloads) {
            Ok(p) => p,
            Err(e) => {
                let conn = self.sas.get(&spi).map(|s| s.conn);
                self.encode_failed(conn, &format!("{exchange:?} response"), &e);
                return false;
            }
        };
        let sa = self.sas.get_mut(&spi).expect("present");
        sa.last_resp = Some((msg_id, packet.clone()));
        sa.peer_expect = msg_id.wrapping_add(1);
        let (src, dst) = (sa.local, sa.remote);
        self.send(src, dst, packet);
        true
    }

    fn send_init(&mut self, spi: u64, now: Instant) {
        let sa = self.sas.get_mut(&spi).expect("present");
        let cfg = &self.conns[sa.conn].cfg;
        let group = sa.ke_group.expect("initiator");
        let dh = match DhSecret::generate(group) {
            Ok(d) => d,
            Err(e) => {
                let r = format!("cannot generate a {group:?} key: {e}");
                self.drop_ike(spi, now, Some(&r));
                return;
            }
        };
        let proposals: Vec<_> = cfg
            .ike
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, vec![]))
            .collect();
        let src_hash = if cfg.encap == Encap::Force {
            // Never matches: the peer sees us "behind a NAT" and both sides float.
            crypto::random_bytes(20)
        } else {
            nat_hash(sa.spi_i, 0, sa.local)
        };
        let dst_hash = nat_hash(sa.spi_i, 0, sa.remote);
        let mut payloads = vec![];
        if let Some(c) = &sa.cookie {
            payloads.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c)));
        }
        payloads.push(Payload::Sa(proposals));
        payloads.push(Payload::Ke(Ke {
            group: group.id(),
            data: dh.public(),
        }));
        payloads.push(Payload::Nonce(&sa.ni));
        payloads.push(Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_SOURCE_IP,
            &src_hash,
        )));
        payloads.push(Payload::Notify(Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            &dst_hash,
        )));
        let hdr = Header {
            ispi: sa.spi_i,
            rspi: 0,
            next_payload: PayloadType::NONE,
            major: 2,
            minor: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::INITIATOR,
            message_id: 0,
            length: 0,
        };
        let packet = match wire::emit_message(&hdr, &payloads) {
            Ok(p) => p,
            Err(e) => {
                drop(payloads);
                let conn = sa.conn;
                self.encode_failed(Some(conn), "IKE_SA_INIT request", &e);
                self.drop_ike(spi, now, Some("IKE_SA_INIT request could not be encoded"));
                return;
            }
        };
        drop(payloads);
        sa.dh = Some(dh);
        sa.init_req = packet.clone();
        sa.next_msg_id = 1;
        sa.inflight = Some(Inflight {
            msg_id: 0,
            packet: packet.clone(),
            first_sent: now,
            next_retx: now + self.settings.retransmit_base,
            tries: 0,
            kind: Pending::Init,
        });
        let (src, dst) = (sa.local, sa.remote);
        self.send(src, dst, packet);
    }

    /// Builds the packet of a queued request. None: nothing to send any more.
    fn build_request(
        &mut self,
        spi: u64,
        p: Pending,
        now: Instant,
    ) -> Option<(Vec<u8>, Pending, u32)> {
        let sa = self.sas.get_mut(&spi)?;
        let msg_id = sa.next_msg_id;
        let conn = sa.conn;
        match p {
            Pending::RekeyChild { old, spi_in, .. } => {
                let c = self.children.get(&old)?;
                if c.state != ChildState::Active {
                    return None;
                }
                let cfg = &self.conns[conn].cfg;
                let group = cfg.esp.first().and_then(|e| e.dh.first().copied());
                let dh = match group.map(DhSecret::generate) {
                    Some(Ok(d)) => Some(d),
                    Some(Err(_)) => return None,
                    None => None,
                };
                let ni = crypto::random_bytes(NONCE_LEN);
                let proposals: Vec<_> = cfg
                    .esp
                    .iter()
                    .enumerate()
                    .map(|(i, p)| p.to_wire(i as u8 + 1, spi_in, true))
                    .collect();
                let old_spi = c.spi_in.to_be_bytes();
                let tsi = ts::to_ts(&c.local_ts);
                let tsr = ts::to_ts(&c.peer_ts);
                let mut payloads = vec![
                    Payload::Notify(Notify {
                        protocol: ProtocolId::ESP,
                        spi: &old_spi,
                        ntype: NotifyType::REKEY_SA,
                        data: &[],
                    }),
                    Payload::Sa(proposals),
                    Payload::Nonce(&ni),
                ];
                if let Some(d) = &dh {
                    payloads.push(Payload::Ke(Ke {
                        group: d.group().id(),
                        data: d.public(),
                    }));
                }
                payloads.push(Payload::TsI(tsi));
                payloads.push(Payload::TsR(tsr));
                let sealed =
                    self.seal(spi, ExchangeType::CREATE_CHILD_SA, false, msg_id, &payloads);
                drop(payloads);
                let packet = match sealed {
                    Ok(p) => p,
                    Err(e) => {
                        self.encode_failed(Some(conn), "CHILD_SA rekey request", &e);
                        // The old SA carries on; a later attempt may fare better.
                        if let Some(c) = self.children.get_mut(&old) {
                            c.rekey_requested = false;
                            c.rekey_at = now + Duration::from_secs(30);
                        }
                        return None;
                    }
                };
                self.sas.get_mut(&spi)?.next_msg_id += 1;
                Some((
                    packet,
                    Pending::RekeyChild {
                        old,
                        spi_in,
                        ni,
                        dh,
                    },
                    msg_id,
                ))
            }
            Pending::RekeyIke { new_spi, ni, dh } => {
                let cfg = &self.conns[conn].cfg;
                let proposals: Vec<_> = cfg
                    .ike
                    .iter()
                    .enumerate()
                    .map(|(i, p)| p.to_wire(i as u8 + 1, new_spi.to_be_bytes().to_vec()))
                    .collect();
                let payloads = vec![
                    Payload::Sa(proposals),
                    Payload::Nonce(&ni),
                    Payload::Ke(Ke {
                        group: dh.group().id(),
                        data: dh.public(),
                    }),
                ];
                let sealed =
                    self.seal(spi, ExchangeType::CREATE_CHILD_SA, false, msg_id, &payloads);
                drop(payloads);
                let packet = match sealed {
                    Ok(p) => p,
                    Err(e) => {
                        self.encode_failed(Some(conn), "IKE_SA rekey request", &e);
                        self.sas.get_mut(&spi)?.rekey_at = Some(now + Duration::from_secs(30));
                        return None;
                    }
                };
                self.sas.get_mut(&spi)?.next_msg_id += 1;
                Some((packet, Pending::RekeyIke { new_spi, ni, dh }, msg_id))
            }
            Pending::CreateChild { spi_in, .. } => {
                let cfg = &self.conns[conn].cfg;
                let group = cfg.esp.first().and_then(|e| e.dh.first().copied());
                let dh = match group.map(DhSecret::generate) {
                    Some(Ok(d)) => Some(d),
                    Some(Err(_)) => return None,
                    None => None,
                };
                let ni = crypto::random_bytes(NONCE_LEN);
                let proposals: Vec<_> = cfg
                    .esp
                    .iter()
                    .enumerate()
                    .map(|(i, p)| p.to_wire(i as u8 + 1, spi_in, true))
                    .collect();
                let mut payloads = vec![Payload::Sa(proposals), Payload::Nonce(&ni)];
                if let Some(d) = &dh {
                    payloads.push(Payload::Ke(Ke {
                        group: d.group().id(),
                        data: d.public(),
                    }));
                }
                payloads.push(Payload::TsI(ts::to_ts(&cfg.local_ts)));
                payloads.push(Payload::TsR(ts::to_ts(&cfg.peer_ts)));
                let sealed =
                    self.seal(spi, ExchangeType::CREATE_CHILD_SA, false, msg_id, &payloads);
                drop(payloads);
                let packet = match sealed {
                    Ok(p) => p,
                    Err(e) => {
                        self.encode_failed(Some(conn), "CREATE_CHILD_SA request", &e);
                        self.status(
                            conn,
                            ConnStatus::Down,
                            "CREATE_CHILD_SA request could not be encoded",
                        );
                        return None;
                    }
                };
                self.sas.get_mut(&spi)?.next_msg_id += 1;
                Some((packet, Pending::CreateChild { spi_in, ni, dh }, msg_id))
            }
            Pending::DeleteChildren(ids) => {
                let spis: Vec<[u8; 4]> = ids
                    .iter()
                    .filter_map(|id| self.children.get(id))
                    .map(|c| c.spi_in.to_be_bytes())
                    .collect();
                if spis.is_empty() {
                    return None;
                }
                let payloads = vec![Payload::Delete(Delete {
                    protocol: ProtocolId::ESP,
                    spi_size: 4,
                    spis: spis.iter().map(|s| &s[..]).collect(),
                })];
                let sealed = self.seal(spi, ExchangeType::INFORMATIONAL, false, msg_id, &payloads);
                drop(payloads);
                let packet = match sealed {
                    Ok(p) => p,
                    Err(e) => {
                        // Gone here all the same; the peer's copies expire with their lifetime.
                        self.encode_failed(Some(conn), "CHILD_SA Delete request", &e);
                        for id in &ids {
                            self.removals.push((now, conn, *id));
                        }
                        return None;
                    }
                };
                self.sas.get_mut(&spi)?.next_msg_id += 1;
                Some((packet, Pending::DeleteChildren(ids), msg_id))
            }
            Pending::DeleteIke => {
                let payloads = vec![Payload::Delete(Delete {
                    protocol: ProtocolId::IKE,
                    spi_size: 0,
                    spis: vec![],
                })];
                let sealed = self.seal(spi, ExchangeType::INFORMATIONAL, false, msg_id, &payloads);
                let packet = match sealed {
                    Ok(p) => p,
                    Err(e) => {
                        self.encode_failed(Some(conn), "IKE_SA Delete request", &e);
                        self.drop_ike(spi, now, None);
                        return None;
                    }
                };
                let sa = self.sas.get_mut(&spi)?;
                sa.next_msg_id += 1;
                Some((packet, Pending::DeleteIke, msg_id))
            }
            Pending::Dpd => {
                let packet = match self.seal(spi, ExchangeType::INFORMATIONAL, false, msg_id, &[]) {
                    Ok(p) => p,
                    Err(e) => {
                        self.encode_failed(Some(conn), "liveness check", &e);
                        return None;
                    }
                };
                self.sas.get_mut(&spi)?.next_msg_id += 1;
                Some((packet, Pending::Dpd, msg_id))
            }
            Pending::Init | Pending::Auth { .. } => None,
        }
    }

    // -----------------------------------------------------------------------------------
    // Receiving

    /// One received UDP datagram (payload only), with our address and the peer's.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.stats.received += 1;
        #[cfg(test)]
        if std::mem::take(&mut self.panic_on_receive) {
            panic!("test hook: panic on receive");
        }
        let data = if local.port() == self.settings.natt_port {
            // RFC 3948 2.2: IKE behind a non-ESP marker; 0xff is a keepalive; else ESP.
            if data.len() < 4 || data[..4] != [0; 4] {
                return;
            }
            &data[4..]
        } else {
            data
        };
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(wire::WireError::UnsupportedMajorVersion { .. }) => {
                // RFC 7296 2.5: answer an IKE_SA_INIT request with INVALID_MAJOR_VERSION.
                if let Ok(h) = Header::parse(data)
                    && h.exchange == ExchangeType::IKE_SA_INIT
                    && !h.is_response()
                {
                    self.plain_notify(local, remote, &h, NotifyType::INVALID_MAJOR_VERSION, &[]);
                }
                self.stats.dropped_malformed += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        let h = msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT {
            if h.is_response() {
                self.init_response(now, local, remote, &msg);
            } else if h.is_initiator() && h.message_id == 0 && h.rspi == 0 {
                self.init_request(now, local, remote, &msg);
            } else {
                self.stats.dropped_malformed += 1;
            }
            return;
        }
        // Our SPI is the one of our role: the sender's I flag says it is the initiator.
        let our = if h.is_initiator() { h.rspi } else { h.ispi };
        let Some(sa) = self.sas.get(&our) else {
            self.stats.dropped_unknown_spi += 1;
            return;
        };
        if sa.spi_i != h.ispi
            || sa.spi_r != h.rspi
            || sa.keys.is_none()
            || sa.initiator == h.is_initiator()
        {
            self.stats.dropped_unknown_spi += 1;
            return;
        }
        // Decrypt before trusting anything.
        let Some(sk) = msg.payloads.last().filter(|p| p.ptype == PayloadType::SK) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let mut retransmitted = false;
        if h.is_response() {
            if sa.inflight.as_ref().map(|i| i.msg_id) != Some(h.message_id) {
                self.stats.dropped_unexpected += 1;
                return;
            }
        } else if h.message_id != sa.peer_expect {
            if sa
                .last_resp
                .as_ref()
                .is_none_or(|(id, _)| *id != h.message_id)
            {
                self.stats.dropped_unexpected += 1;
                return;
            }
            retransmitted = true;
        }
        let off = sk.body.as_ptr() as usize - msg.bytes.as_ptr() as usize;
        let aad = &msg.bytes[..off];
        let plain = match sa.keys.as_ref().expect("checked").inb.open(aad, sk.body) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_integrity += 1;
                return;
            }
        };
        if retransmitted {
            // A retransmitted request (authentic): the cached answer again (RFC 7296 2.1).
            let (id_resp, resp) = sa.last_resp.clone().expect("checked");
            debug_assert_eq!(id_resp, h.message_id);
            let (src, dst) = (sa.local, sa.remote);
            self.stats.retransmits += 1;
            self.send(src, dst, resp);
            return;
        }
        let inner = match wire::parse_chain(sk.next, &plain) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        // Authenticated: the peer is alive; it may have moved (NAT mapping change).
        let sa = self.sas.get_mut(&our).expect("present");
        sa.last_heard = now;
        if local.port() == self.settings.natt_port {
            // Floated to the NAT-T port, or the NAT mapping changed (RFC 7296 2.23).
            sa.local = local;
            sa.remote = remote;
        }
        if !h.is_response()
            && let Some(t) = unknown_critical(&inner)
        {
            let data = [t.0];
            self.respond(
                our,
                h.exchange,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                    &data,
                ))],
            );
            return;
        }
        if h.is_response() {
            let sa = self.sas.get_mut(&our).expect("present");
            let inf = sa.inflight.take().expect("checked");
            self.response(now, our, &h, inf.kind, &inner);
            self.pump(our, now);
        } else {
            match h.exchange {
                ExchangeType::IKE_AUTH => self.auth_request(now, our, &msg, &inner),
                ExchangeType::CREATE_CHILD_SA => self.create_child_request(now, our, &h, &inner),
                ExchangeType::INFORMATIONAL => self.informational_request(now, our, &h, &inner),
                _ => {
                    // Unknown exchange type: ignore (RFC 7296 leaves it undefined).
                    self.stats.dropped_unexpected += 1;
                    let sa = self.sas.get_mut(&our).expect("present");
                    sa.peer_expect = h.message_id.wrapping_add(1);
                }
            }
        }
    }

    /// An unencrypted notify answer to an IKE_SA_INIT request.
    fn plain_notify(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        req: &Header,
        t: NotifyType,
        data: &[u8],
    ) {
        let hdr = Header {
            ispi: req.ispi,
            rspi: 0,
            next_payload: PayloadType::NONE,
            major: 2,
            minor: 0,
            exchange: req.exchange,
            flags: flags::RESPONSE,
            message_id: req.message_id,
            length: 0,
        };
        match wire::emit_message(&hdr, &[Payload::Notify(Notify::new(t, data))]) {
            Ok(packet) => self.send(local, remote, packet),
            Err(e) => self.encode_failed(None, &format!("{t:?} notify to {remote}"), &e),
        }
    }

    /// DoS protection for an IKE_SA_INIT request (RFC 7296 2.6): past the cookie threshold
    /// only requests returning our cookie get state, past the half-open caps none does.
    /// None: answered or dropped here (counted); else whether it carried a valid cookie.
    fn admit_init(
        &mut self,
        now: Instant,
        r: &InitReq<'_>,
        payloads: &[RawPayload<'_>],
    ) -> Option<bool> {
        let (remote, h, ni) = (r.remote, r.h, r.ni);
        let l = &self.settings.limits;
        let ls = &mut self.stats.limits;
        let got = notify_of(payloads, NotifyType::COOKIE).map(|n| n.data);
        let mut cookie_ok = false;
        if let Some(got) = got {
            let (check, rotated) = self.cookies.check(now, got, ni, remote.ip(), h.ispi);
            ls.cookie_rotations += u64::from(rotated);
            ls.cookies_stale += u64::from(check == CookieCheck::Stale);
            cookie_ok = check == CookieCheck::Valid;
        }
        if !cookie_ok && self.half_open.total() >= self.settings.cookie_threshold {
            self.demand_cookie(now, r);
            return None;
        }
        if self.half_open.of_peer(remote.ip()) >= l.half_open_per_peer {
            ls.half_open_per_peer += 1;
            return None;
        }
        if self.half_open.total() >= l.half_open_total {
            ls.half_open_total += 1;
            return None;
        }
        Some(cookie_ok)
    }

    /// Whether the DH of an IKE_SA_INIT answer may be computed now: past the rate a request
    /// without a valid cookie is asked for one (costs no DH), one with a cookie is dropped.
    fn admit_dh(&mut self, now: Instant, r: &InitReq<'_>, cookie_ok: bool) -> bool {
        if self.dh_bucket.take(now) {
            return true;
        }
        if cookie_ok {
            self.stats.limits.dh_dropped += 1;
        } else {
            self.stats.limits.dh_cookie += 1;
            self.demand_cookie(now, r);
        }
        false
    }

    fn demand_cookie(&mut self, now: Instant, r: &InitReq<'_>) {
        let (want, rotated) = self.cookies.make(now, r.ni, r.remote.ip(), r.h.ispi);
        self.stats.limits.cookie_rotations += u64::from(rotated);
        self.stats.cookies_sent += 1;
        self.plain_notify(r.local, r.remote, r.h, NotifyType::COOKIE, &want);
    }

    fn init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &Message<'_>,
    ) {
        let h = msg.header;
        if let Some(our) = self.half_open.get(remote, h.ispi)
            && let Some(sa) = self.sas.get(&our)
            && !sa.init_resp.is_empty()
        {
            if sa.init_req == msg.bytes {
                let (src, dst, p) = (sa.local, sa.remote, sa.init_resp.clone());
                self.stats.retransmits += 1;
                self.send(src, dst, p);
            }
            return;
        }
        let Some(conn) = self
            .conns
            .iter()
            .position(|c| c.cfg.admin_up && c.cfg.peer == remote.ip() && c.cfg.local == local.ip())
        else {
            self.stats.dropped_no_conn += 1;
            return;
        };
        if let Some(t) = unknown_critical(&msg.payloads) {
            self.plain_notify(
                local,
                remote,
                &h,
                NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                &[t.0],
            );
            return;
        }
        let (Some(sa_body), Some(ke_body), Some(ni)) = (
            body_of(&msg.payloads, PayloadType::SA),
            body_of(&msg.payloads, PayloadType::KE),
            body_of(&msg.payloads, PayloadType::NONCE),
        ) else {
            self.plain_notify(local, remote, &h, NotifyType::INVALID_SYNTAX, &[]);
            return;
        };
        let (Ok(offers), Ok(ke)) = (wire::parse_sa(sa_body), Ke::parse(ke_body)) else {
            self.plain_notify(local, remote, &h, NotifyType::INVALID_SYNTAX, &[]);
            return;
        };
        if !nonce_ok(ni) {
            self.plain_notify(local, remote, &h, NotifyType::INVALID_SYNTAX, &[]);
            return;
        }
        let req = InitReq {
            local,
            remote,
            h: &h,
            ni,
        };
        let Some(cookie_ok) = self.admit_init(now, &req, &msg.payloads) else {
            return;
        };
        let cfg = &self.conns[conn].cfg;
        let Some((suite, num, _)) = proposal::choose_ike(&cfg.ike, &offers) else {
            // Unauthenticated: anyone can send this from the peer's address. It may name
            // why a connection is down (its port left out, so repeats are the same reason),
            // never take down one that is connecting or up.
            let reason = format!(
                "IKE_SA_INIT from {}: NO_PROPOSAL_CHOSEN (none of the peer's proposals matches ours)",
                remote.ip()
            );
            self.plain_notify(local, remote, &h, NotifyType::NO_PROPOSAL_CHOSEN, &[]);
            if self.conns[conn].status == ConnStatus::Down {
                self.status(conn, ConnStatus::Down, reason);
            }
            return;
        };
        if ke.group != suite.dh.id() {
            self.stats.rejected_ke += 1;
            self.plain_notify(
                local,
                remote,
                &h,
                NotifyType::INVALID_KE_PAYLOAD,
                &suite.dh.id().to_be_bytes(),
            );
            return;
        }
        if !self.admit_dh(now, &req, cookie_ok) {
            return;
        }
        let cfg = &self.conns[conn].cfg;
        let Ok(dh) = DhSecret::generate(suite.dh) else {
            return;
        };
        let Ok(g_ir) = dh.agree(ke.data) else {
            self.stats.rejected_ke += 1;
            self.plain_notify(local, remote, &h, NotifyType::INVALID_SYNTAX, &[]);
            return;
        };
        let spi_r = self.new_ike_spi();
        let nr = crypto::random_bytes(NONCE_LEN);
        // NAT detection (RFC 7296 2.23).
        let nat_peer = notify_of(&msg.payloads, NotifyType::NAT_DETECTION_SOURCE_IP)
            .is_some_and(|n| n.data != nat_hash(h.ispi, 0, remote).as_slice());
        let nat_local = notify_of(&msg.payloads, NotifyType::NAT_DETECTION_DESTINATION_IP)
            .is_some_and(|n| n.data != nat_hash(h.ispi, 0, local).as_slice());
        let peer_natt = notify_of(&msg.payloads, NotifyType::NAT_DETECTION_SOURCE_IP).is_some();
        let force = cfg.encap == Encap::Force && peer_natt;
        let src_hash = if force {
            crypto::random_bytes(20)
        } else {
            nat_hash(h.ispi, spi_r, local)
        };
        let dst_hash = nat_hash(h.ispi, spi_r, remote);
        let chosen = proposal::IkeProposal {
            encr: vec![suite.encr],
            integ: vec![suite.integ],
            prf: vec![suite.prf],
            dh: vec![suite.dh],
        }
        .to_wire(num, vec![]);
        let mut payloads = vec![
            Payload::Sa(vec![chosen]),
            Payload::Ke(Ke {
                group: suite.dh.id(),
                data: dh.public(),
            }),
            Payload::Nonce(&nr),
        ];
        if peer_natt {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                &src_hash,
            )));
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                &dst_hash,
            )));
        }
        let hdr = Header {
            ispi: h.ispi,
            rspi: spi_r,
            next_payload: PayloadType::NONE,
            major: 2,
            minor: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: flags::RESPONSE,
            message_id: 0,
            length: 0,
        };
        let resp = match wire::emit_message(&hdr, &payloads) {
            Ok(r) => r,
            Err(e) => {
                drop(payloads);
                self.encode_failed(Some(conn), &format!("IKE_SA_INIT response to {remote}"), &e);
                return;
            }
        };
        drop(payloads);
        let seed = skeyseed(suite.prf, ni, &nr, &g_ir);
        let keys = derive_ike_keys(&suite, &seed, ni, &nr, h.ispi, spi_r);
        let Some(keys) = make_keys(&suite, keys, false) else {
            return;
        };
        let sa = IkeSa {
            conn,
            spi_i: h.ispi,
            spi_r,
            initiator: false,
            state: IkeState::HalfOpen,
            suite: Some(suite),
            keys: Some(keys),
            ni: ni.to_vec(),
            nr,
            dh: None,
            ke_group: None,
            cookie: None,
            init_req: msg.bytes.to_vec(),
            init_resp: resp.clone(),
            local,
            remote,
            nat_local: nat_local || force,
            nat_peer,
            next_msg_id: 0,
            inflight: None,
            queue: VecDeque::new(),
            peer_expect: 1,
            last_resp: None,
            last_heard: now,
            created: now,
            rekey_at: None,
            expire_at: None,
            next_keepalive: None,
            peer_rekey: None,
            rekeyed: false,
        };
        self.sas.insert(spi_r, sa);
        self.half_open.insert(remote, h.ispi, spi_r);
        self.send(local, remote, resp);
    }

    fn init_response(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        remote: SocketAddr,
        msg: &Message<'_>,
    ) {
        let h = msg.header;
        let Some(sa) = self.sas.get_mut(&h.ispi) else {
            self.stats.dropped_unknown_spi += 1;
            return;
        };
        if sa.state != IkeState::InitSent || !sa.initiator || remote.ip() != sa.remote.ip() {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let conn = sa.conn;
        let spi = h.ispi;
        if let Some(c) = notify_of(&msg.payloads, NotifyType::COOKIE) {
            // RFC 7296 2.6: repeat IKE_SA_INIT with the cookie first.
            if c.data.is_empty() || c.data.len() > 64 {
                self.stats.dropped_malformed += 1;
                return;
            }
            sa.cookie = Some(c.data.to_vec());
            sa.inflight = None;
            self.send_init(spi, now);
            return;
        }
        if let Some(n) = notify_of(&msg.payloads, NotifyType::INVALID_KE_PAYLOAD) {
            let cfg = &self.conns[conn].cfg;
            let g = (n.data.len() == 2)
                .then(|| u16::from_be_bytes([n.data[0], n.data[1]]))
                .and_then(DhGroup::from_id)
                .filter(|g| cfg.ike.iter().any(|p| p.dh.contains(g)));
            match g {
                Some(g) if Some(g) != sa.ke_group => {
                    sa.ke_group = Some(g);
                    sa.inflight = None;
                    self.send_init(spi, now);
                }
                _ => {
                    let r = format!(
                        "IKE_SA_INIT: peer {} wants a DH group we do not allow",
                        remote.ip()
                    );
                    self.drop_ike(spi, now, Some(&r));
                }
            }
            return;
        }
        if let Some(n) = first_error(&msg.payloads) {
            let r = format!("IKE_SA_INIT refused by {}: {:?}", remote.ip(), n.ntype);
            self.drop_ike(spi, now, Some(&r));
            return;
        }
        let parsed = (|| {
            let offers = wire::parse_sa(body_of(&msg.payloads, PayloadType::SA)?).ok()?;
            let ke = Ke::parse(body_of(&msg.payloads, PayloadType::KE)?).ok()?;
            let nr = body_of(&msg.payloads, PayloadType::NONCE).filter(|n| nonce_ok(n))?;
            Some((offers, ke, nr))
        })();
        let Some((offers, ke, nr)) = parsed else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let cfg = &self.conns[conn].cfg;
        let accepted = proposal::accept_ike(&cfg.ike, &offers);
        let Some((suite, _)) =
            accepted.filter(|(s, _)| Some(s.dh) == sa.ke_group && ke.group == s.dh.id())
        else {
            let r = format!(
                "IKE_SA_INIT: {} chose a proposal we did not offer",
                remote.ip()
            );
            self.drop_ike(spi, now, Some(&r));
            return;
        };
        if h.rspi == 0 {
            self.stats.dropped_malformed += 1;
            return;
        }
        let g_ir = match sa.dh.as_ref().expect("sent").agree(ke.data) {
            Ok(g) => g,
            Err(_) => {
                let r = format!("IKE_SA_INIT: invalid KE public value from {}", remote.ip());
                self.drop_ike(spi, now, Some(&r));
                return;
            }
        };
        let encap_forced = cfg.encap == Encap::Force;
        sa.nat_local = notify_of(&msg.payloads, NotifyType::NAT_DETECTION_DESTINATION_IP)
            .is_some_and(|n| n.data != nat_hash(sa.spi_i, h.rspi, sa.local).as_slice())
            || encap_forced;
        sa.nat_peer = notify_of(&msg.payloads, NotifyType::NAT_DETECTION_SOURCE_IP)
            .is_some_and(|n| n.data != nat_hash(sa.spi_i, h.rspi, remote).as_slice());
        sa.spi_r = h.rspi;
        sa.nr = nr.to_vec();
        sa.init_resp = msg.bytes.to_vec();
        sa.suite = Some(suite);
        sa.dh = None;
        sa.inflight = None;
        let seed = skeyseed(suite.prf, &sa.ni, nr, &g_ir);
        let keys = derive_ike_keys(&suite, &seed, &sa.ni, nr, sa.spi_i, sa.spi_r);
        let Some(keys) = make_keys(&suite, keys, true) else {
            return;
        };
        sa.keys = Some(keys);
        if sa.encap() {
            // RFC 7296 2.23: float to the NAT-T port for everything after IKE_SA_INIT.
            sa.local.set_port(self.settings.natt_port);
            sa.remote.set_port(self.settings.natt_port);
            if sa.nat_local {
                sa.next_keepalive = Some(now + self.settings.keepalive);
            }
        }
        self.send_auth(spi, now);
    }

    fn send_auth(&mut self, spi: u64, now: Instant) {
        let spi_in = self.new_esp_spi();
        let sa = self.sas.get_mut(&spi).expect("present");
        let cfg = &self.conns[sa.conn].cfg;
        let (id_type, id_data) = cfg.local_id.to_wire();
        let id = Id {
            id_type,
            data: &id_data,
        };
        let keys = sa.keys.as_ref().expect("derived");
        let prf = sa.suite.expect("chosen").prf;
        let octets = signed_octets(prf, &sa.init_req, &sa.nr, &keys.sk_p_local, &id.body());
        let auth = psk_auth(prf, &cfg.psk, &octets);
        let proposals: Vec<_> = cfg
            .esp
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, spi_in, false))
            .collect();
        let payloads = vec![
            Payload::IdI(id),
            Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, &[])),
            Payload::Auth(Auth {
                method: AuthMethod::SHARED_KEY_MIC,
                data: &auth,
            }),
            Payload::Sa(proposals),
            Payload::TsI(ts::to_ts(&cfg.local_ts)),
            Payload::TsR(ts::to_ts(&cfg.peer_ts)),
        ];
        sa.state = IkeState::AuthSent;
        let msg_id = sa.next_msg_id;
        let sealed = self.seal(spi, ExchangeType::IKE_AUTH, false, msg_id, &payloads);
        drop(payloads);
        let packet = match sealed {
            Ok(p) => p,
            Err(e) => {
                let conn = self.sas[&spi].conn;
                self.encode_failed(Some(conn), "IKE_AUTH request", &e);
                self.drop_ike(spi, now, Some("IKE_AUTH request could not be encoded"));
                return;
            }
        };
        let sa = self.sas.get_mut(&spi).expect("present");
        sa.next_msg_id += 1;
        sa.inflight = Some(Inflight {
            msg_id,
            packet: packet.clone(),
            first_sent: now,
            next_retx: now + self.settings.retransmit_base,
            tries: 0,
            kind: Pending::Auth { spi_in },
        });
        let (src, dst) = (sa.local, sa.remote);
        self.send(src, dst, packet);
    }

    /// Verifies the peer's AUTH (RFC 7296 2.15): IDx and AUTH payloads from `inner`.
    fn verify_auth(
        &self,
        spi: u64,
        inner: &[RawPayload<'_>],
        id_t: PayloadType,
    ) -> Result<(), String> {
        let sa = &self.sas[&spi];
        let cfg = &self.conns[sa.conn].cfg;
        let id = body_of(inner, id_t)
            .and_then(|b| Id::parse(b).ok())
            .ok_or("no identity payload")?;
        if !cfg.peer_id.matches(id.id_type, id.data) {
            return Err(format!(
                "peer identity {} is not the configured {}",
                Identity::describe(id.id_type, id.data),
                cfg.peer_id
            ));
        }
        let auth = body_of(inner, PayloadType::AUTH)
            .and_then(|b| Auth::parse(b).ok())
            .ok_or("no AUTH payload")?;
        if auth.method != AuthMethod::SHARED_KEY_MIC {
            return Err(format!(
                "peer authenticates with {:?}, we use PSK",
                auth.method
            ));
        }
        let keys = sa.keys.as_ref().expect("established");
        let prf = sa.suite.expect("chosen").prf;
        // The peer signs its own IKE_SA_INIT message and our nonce.
        let (msg, nonce) = if sa.initiator {
            (&sa.init_resp, &sa.ni)
        } else {
            (&sa.init_req, &sa.nr)
        };
        let octets = signed_octets(prf, msg, nonce, &keys.sk_p_peer, &id.body());
        let want = psk_auth(prf, &cfg.psk, &octets);
        if !ct_eq(&want, auth.data) {
            return Err("AUTH payload does not verify: pre-shared keys differ".into());
        }
        Ok(())
    }

    fn auth_request(
        &mut self,
        now: Instant,
        spi: u64,
        msg: &Message<'_>,
        inner: &[RawPayload<'_>],
    ) {
        let h = msg.header;
        let sa = &self.sas[&spi];
        if sa.state != IkeState::HalfOpen {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let remote = sa.remote;
        // Several connections may share this address pair: the initiator's identity says
        // which one it wants (RFC 7296 2.15: PSK and policy follow the identity).
        let idi = body_of(inner, PayloadType::IDI).and_then(|b| Id::parse(b).ok());
        if let Some(id) = idi {
            let cur = &self.conns[sa.conn].cfg;
            if !cur.peer_id.matches(id.id_type, id.data) {
                let (l, p) = (cur.local, cur.peer);
                if let Some(c) = self.conns.iter().position(|c| {
                    c.cfg.admin_up
                        && c.cfg.local == l
                        && c.cfg.peer == p
                        && c.cfg.peer_id.matches(id.id_type, id.data)
                }) {
                    self.sas.get_mut(&spi).expect("present").conn = c;
                }
            }
        }
        let conn = self.sas[&spi].conn;
        if let Err(why) = self.verify_auth(spi, inner, PayloadType::IDI) {
            self.stats.auth_failed += 1;
            self.respond(
                spi,
                ExchangeType::IKE_AUTH,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::AUTHENTICATION_FAILED,
                    &[],
                ))],
            );
            let r = format!(
                "IKE_AUTH from {}: AUTHENTICATION_FAILED: {why}",
                remote.ip()
            );
            self.drop_ike(spi, now, Some(&r));
            return;
        }
        // Authenticated: the SA is established whatever happens to the CHILD_SA.
        let ike_room = self.ike_room(conn);
        let sa = self.sas.get_mut(&spi).expect("present");
        sa.state = IkeState::Established;
        self.half_open.remove(spi);
        let cfg = &self.conns[conn].cfg;
        let (id_type, id_data) = cfg.local_id.to_wire();
        let id = Id {
            id_type,
            data: &id_data,
        };
        let keys = sa.keys.as_ref().expect("derived");
        let suite = sa.suite.expect("chosen");
        let octets = signed_octets(
            suite.prf,
            &sa.init_resp,
            &sa.ni,
            &keys.sk_p_local,
            &id.body(),
        );
        let auth = psk_auth(suite.prf, &cfg.psk, &octets);
        let mut payloads = vec![
            Payload::IdR(id),
            Payload::Auth(Auth {
                method: AuthMethod::SHARED_KEY_MIC,
                data: &auth,
            }),
        ];
        let ike_life = cfg.lifetimes.ike;
        let child = if !ike_room || !self.child_room(conn, None) {
            Err(NotifyType::NO_ADDITIONAL_SAS)
        } else {
            self.negotiate_child(spi, inner, None, true)
        };
        let child_payloads;
        let mut failure = None;
        match &child {
            Ok((neg, _)) => {
                child_payloads = neg.response_payloads();
                payloads.extend(child_payloads.iter().cloned());
            }
            Err(t) => {
                failure = Some(*t);
                payloads.push(Payload::Notify(Notify::new(*t, &[])));
            }
        }
        let sent = self.respond(spi, ExchangeType::IKE_AUTH, h.message_id, &payloads);
        drop(payloads);
        if !sent {
            // Half-established and unanswerable: forget it; the peer starts over.
            let r = format!(
                "IKE_AUTH from {}: our answer could not be encoded",
                remote.ip()
            );
            self.drop_ike(spi, now, Some(&r));
            return;
        }
        self.stats.ike_established += 1;
        let sa = self.sas.get_mut(&spi).expect("present");
        sa.rekey_at = Some(rekey_time(now, ike_life));
        sa.expire_at = Some(now + ike_life);
        if sa.nat_local {
            sa.next_keepalive = Some(now + self.settings.keepalive);
        }
        match child {
            Ok((neg, _)) => {
                let id = self.install_child(spi, neg, now, None, false);
                self.activate(id);
                self.conns[conn].failures = 0;
                let what = self.describe(spi, id);
                self.status(
                    conn,
                    ConnStatus::Active,
                    format!("established with {} (responder): {what}", remote.ip()),
                );
                self.settle_duplicates(conn, now);
            }
            // RFC 7296 cannot refuse an authenticated IKE SA: it carries no CHILD_SA and is
            // deleted at once. The connection's other SAs carry on.
            Err(_) if !ike_room => {
                self.sas.get_mut(&spi).expect("present").rekeyed = true;
                self.request(spi, Pending::DeleteIke, now);
                self.limit_warning(conn, remote, true, NotifyType::NO_ADDITIONAL_SAS);
            }
            Err(NotifyType::NO_ADDITIONAL_SAS) => {
                self.limit_warning(conn, remote, false, NotifyType::NO_ADDITIONAL_SAS);
            }
            Err(_) => {
                let r = format!(
                    "CHILD_SA with {} refused: {:?}",
                    remote.ip(),
                    failure.expect("set")
                );
                self.status(conn, ConnStatus::Down, r);
            }
        }
    }

    /// Responder: choose the ESP proposal and narrow selectors for a CHILD_SA request.
    /// `pfs`: the KE payload of a CREATE_CHILD_SA request, if any.
    fn negotiate_child(
        &mut self,
        spi: u64,
        inner: &[RawPayload<'_>],
        pfs: Option<Ke<'_>>,
        in_auth: bool,
    ) -> Result<(Negotiated, ()), NotifyType> {
        let sa = &self.sas[&spi];
        let cfg = &self.conns[sa.conn].cfg;
        let offers = body_of(inner, PayloadType::SA)
            .and_then(|b| wire::parse_sa(b).ok())
            .ok_or(NotifyType::INVALID_SYNTAX)?;
        let tsi = body_of(inner, PayloadType::TSI)
            .and_then(|b| wire::parse_ts(b).ok())
            .ok_or(NotifyType::INVALID_SYNTAX)?;
        let tsr = body_of(inner, PayloadType::TSR)
            .and_then(|b| wire::parse_ts(b).ok())
            .ok_or(NotifyType::INVALID_SYNTAX)?;
        if notify_of(inner, NotifyType::USE_TRANSPORT_MODE).is_some() {
            return Err(NotifyType::NO_PROPOSAL_CHOSEN);
        }
        let (suite, num, peer_spi) = proposal::choose_esp(
            &cfg.esp,
            &offers,
            match (in_auth, pfs.is_some()) {
                (true, _) => proposal::ChildKe::Auth,
                (false, true) => proposal::ChildKe::With,
                (false, false) => proposal::ChildKe::Without,
            },
        )
        .ok_or(NotifyType::NO_PROPOSAL_CHOSEN)?;
        // TSi is the initiator's side: the peer's subnets when the peer initiated.
        let max = self.settings.max_selectors;
        let narrowed = ts::narrow(&tsi, &cfg.peer_ts, max).and_then(|p| {
            let l = ts::narrow(&tsr, &cfg.local_ts, max)?;
            Ok((p, l))
        });
        let Ok((peer_ts, local_ts)) = narrowed else {
            let conn = sa.conn;
            self.ts_over_limit(conn, "the peer's");
            return Err(NotifyType::TS_UNACCEPTABLE);
        };
        if peer_ts.is_empty() || local_ts.is_empty() {
            return Err(NotifyType::TS_UNACCEPTABLE);
        }
        let mut dh_out = None;
        let mut g_ir = None;
        if let (Some(ke), Some(g)) = (pfs, suite.dh) {
            if ke.group != g.id() {
                return Err(NotifyType::INVALID_KE_PAYLOAD);
            }
            let d = DhSecret::generate(g).map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
            g_ir = Some(d.agree(ke.data).map_err(|_| NotifyType::INVALID_SYNTAX)?);
            dh_out = Some(d);
        }
        let peer_spi = u32::from_be_bytes(
            peer_spi
                .try_into()
                .map_err(|_| NotifyType::INVALID_SYNTAX)?,
        );
        Ok((
            Negotiated {
                suite,
                num,
                spi_in: self.new_esp_spi(),
                spi_out: peer_spi,
                local_ts,
                peer_ts,
                dh: dh_out,
                g_ir,
                ni: vec![],
                nr: vec![],
            },
            (),
        ))
    }

    /// Records a negotiated CHILD_SA and hands its inbound half to the data plane.
    fn install_child(
        &mut self,
        spi: u64,
        mut neg: Negotiated,
        now: Instant,
        replaces: Option<ChildId>,
        we_initiated_exchange: bool,
    ) -> ChildId {
        let sa = &self.sas[&spi];
        let conn = sa.conn;
        let cfg = &self.conns[conn].cfg;
        let keys = sa.keys.as_ref().expect("established");
        let prf = sa.suite.expect("chosen").prf;
        // Nonces of the exchange: IKE_AUTH uses the IKE SA's.
        let (ni, nr) = if neg.ni.is_empty() {
            (sa.ni.clone(), sa.nr.clone())
        } else {
            (std::mem::take(&mut neg.ni), std::mem::take(&mut neg.nr))
        };
        let len = 2 * neg.suite.cipher.keymat_len();
        let keymat = child_keymat(
            prf,
            &keys.sk_d,
            neg.g_ir.as_deref().map(|g| &g[..]),
            &ni,
            &nr,
            len,
        );
        let (key_in, key_out) =
            child_keys(neg.suite.cipher, &keymat, we_initiated_exchange).expect("length");
        let id = self.next_child;
        self.next_child += 1;
        let udp_encap = sa.encap().then(|| (sa.local.port(), sa.remote.port()));
        let life = cfg.lifetimes.child;
        let min_nonce = if ni < nr { ni.clone() } else { nr.clone() };
        self.children.insert(
            id,
            Child {
                conn,
                ike: spi,
                spi_in: neg.spi_in,
                spi_out: neg.spi_out,
                suite: neg.suite,
                state: ChildState::InboundOnly,
                local_ts: neg.local_ts.clone(),
                peer_ts: neg.peer_ts.clone(),
                rekey_at: rekey_time(now, life),
                expire_at: now + life,
                min_nonce,
                peer_rekey: None,
                replaces,
                rekey_requested: false,
                activate_by: None,
                created: now,
            },
        );
        self.stats.child_established += 1;
        self.events.push_back(Event::InstallInbound(ChildSa {
            id,
            conn,
            spi_in: neg.spi_in,
            spi_out: neg.spi_out,
            cipher: neg.suite.cipher,
            esn: neg.suite.esn,
            key_in,
            key_out,
            local: cfg.local,
            peer: cfg.peer,
            udp_encap,
            local_ts: neg.local_ts,
            peer_ts: neg.peer_ts,
            replaces,
        }));
        id
    }

    fn activate(&mut self, id: ChildId) {
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        c.activate_by = None;
        if c.state != ChildState::InboundOnly {
            return;
        }
        c.state = ChildState::Active;
        let conn = c.conn;
        self.events
            .push_back(Event::ActivateOutbound { conn, child: id });
    }

    fn response(
        &mut self,
        now: Instant,
        spi: u64,
        h: &Header,
        kind: Pending,
        inner: &[RawPayload<'_>],
    ) {
        match kind {
            Pending::Auth { spi_in } => self.auth_response(now, spi, inner, spi_in),
            Pending::RekeyChild {
                old,
                spi_in,
                ni,
                dh,
            } => self.rekey_child_response(now, spi, inner, old, spi_in, ni, dh),
            Pending::RekeyIke { new_spi, ni, dh } => {
                self.rekey_ike_response(now, spi, inner, new_spi, ni, dh)
            }
            Pending::CreateChild { spi_in, ni, dh } => {
                self.create_child_response(now, spi, inner, spi_in, ni, dh)
            }
            Pending::DeleteChildren(ids) => {
                let conn = self.sas[&spi].conn;
                for id in &ids {
                    if self.children.contains_key(id) {
                        self.removals.push((now + self.settings.overlap, conn, *id));
                    }
                }
                let live = self.children.iter().any(|(k, c)| {
                    c.conn == conn && !ids.contains(k) && c.state != ChildState::Deleting
                });
                if !live {
                    self.status(conn, ConnStatus::Down, "CHILD_SA deleted");
                }
            }
            Pending::DeleteIke => {
                // Children still on it (not moved by a rekey) go with it.
                self.drop_ike(spi, now, None);
            }
            Pending::Dpd => {}
            Pending::Init => {}
        }
        let _ = h;
    }

    fn auth_response(&mut self, now: Instant, spi: u64, inner: &[RawPayload<'_>], spi_in: u32) {
        let sa = &self.sas[&spi];
        let conn = sa.conn;
        let remote = sa.remote;
        if let Some(n) = notify_of(inner, NotifyType::AUTHENTICATION_FAILED) {
            let _ = n;
            self.stats.auth_failed += 1;
            let r = format!(
                "IKE_AUTH with {}: AUTHENTICATION_FAILED from the peer (pre-shared keys or identities differ)",
                remote.ip()
            );
            self.drop_ike(spi, now, Some(&r));
            return;
        }
        if let Err(why) = self.verify_auth(spi, inner, PayloadType::IDR) {
            self.stats.auth_failed += 1;
            let r = format!(
                "IKE_AUTH with {}: AUTHENTICATION_FAILED: {why}",
                remote.ip()
            );
            self.drop_ike(spi, now, Some(&r));
            return;
        }
        let cfg = &self.conns[conn].cfg;
        let ike_life = cfg.lifetimes.ike;
        let sa = self.sas.get_mut(&spi).expect("present");
        sa.state = IkeState::Established;
        sa.rekey_at = Some(rekey_time(now, ike_life));
        sa.expire_at = Some(now + ike_life);
        self.stats.ike_established += 1;
        if let Some(n) = first_error(inner) {
            let r = format!("CHILD_SA with {} refused: {:?}", remote.ip(), n.ntype);
            self.status(conn, ConnStatus::Down, r);
            self.request(spi, Pending::DeleteIke, now);
            return;
        }
        let ts = self.accept_conn_ts(conn, inner);
        let cfg = &self.conns[conn].cfg;
        let too_many = ts == Err(ts::Refused::TooMany);
        let accepted = (|| {
            let chosen = wire::parse_sa(body_of(inner, PayloadType::SA)?).ok()?;
            let (suite, spi_out) = proposal::accept_esp(&cfg.esp, &chosen, None)?;
            let (local_ts, peer_ts) = ts.ok()?;
            Some((suite, spi_out, local_ts, peer_ts))
        })();
        let Some((suite, spi_out, local_ts, peer_ts)) = accepted else {
            if too_many {
                self.ts_over_limit(conn, "the peer's");
            }
            let r = format!(
                "CHILD_SA with {}: the peer's choice is not one we offered",
                remote.ip()
            );
            self.status(conn, ConnStatus::Down, r);
            self.request(spi, Pending::DeleteIke, now);
            return;
        };
        let neg = Negotiated {
            suite,
            num: 0,
            spi_in,
            spi_out,
            local_ts,
            peer_ts,
            dh: None,
            g_ir: None,
            ni: vec![],
            nr: vec![],
        };
        let id = self.install_child(spi, neg, now, None, true);
        self.activate(id);
        self.conns[conn].failures = 0;
        let what = self.describe(spi, id);
        self.status(
            conn,
            ConnStatus::Active,
            format!("established with {} (initiator): {what}", remote.ip()),
        );
        self.settle_duplicates(conn, now);
    }

    // -----------------------------------------------------------------------------------
    // Limits (`[ike.limits]`, see limits.rs)

    /// Whether the peer may add an IKE SA to a connection (`ike_sas_per_conn`): counts the
    /// established ones, rekeyed ones the peer has not deleted yet included. Counted if not.
    fn ike_room(&mut self, conn: ConnId) -> bool {
        let n = self
            .sas
            .values()
            .filter(|s| s.conn == conn && s.state == IkeState::Established)
            .count();
        let room = n < self.settings.limits.ike_sas_per_conn;
        self.stats.limits.ike_sas_per_conn += u64::from(!room);
        room
    }

    /// Whether the peer may add a CHILD_SA to a connection (`child_sas_per_conn`), over all
    /// its IKE SAs: counts the live ones but those a peer's rekey already replaced and
    /// `except` (the one a rekey replaces). Counted if not.
    fn child_room(&mut self, conn: ConnId, except: Option<ChildId>) -> bool {
        let n = self
            .children
            .iter()
            .filter(|(id, c)| {
                c.conn == conn
                    && Some(**id) != except
                    && c.peer_rekey.is_none()
                    && matches!(c.state, ChildState::Active | ChildState::InboundOnly)
            })
            .count();
        let room = n < self.settings.limits.child_sas_per_conn;
        self.stats.limits.child_sas_per_conn += u64::from(!room);
        room
    }

    /// A CREATE_CHILD_SA beyond `ike_sas_per_conn` (`ike`: TEMPORARY_FAILURE) or
    /// `child_sas_per_conn` (NO_ADDITIONAL_SAS, RFC 7296 3.10.1).
    fn refuse_create(&mut self, spi: u64, msg_id: u32, ike: bool, answer: NotifyType) {
        let n = [Payload::Notify(Notify::new(answer, &[]))];
        self.respond(spi, ExchangeType::CREATE_CHILD_SA, msg_id, &n);
        let (conn, remote) = (self.sas[&spi].conn, self.sas[&spi].remote);
        self.limit_warning(conn, remote, ike, answer);
    }

    /// For the log: a peer hit `ike_sas_per_conn` (`ike`) or `child_sas_per_conn`.
    fn limit_warning(&mut self, conn: ConnId, remote: SocketAddr, ike: bool, answer: NotifyType) {
        let l = &self.settings.limits;
        let (what, name, n) = if ike {
            ("IKE SAs", "ike_sas_per_conn", l.ike_sas_per_conn)
        } else {
            ("CHILD_SAs", "child_sas_per_conn", l.child_sas_per_conn)
        };
        self.events.push_back(Event::Warning {
            conn: Some(conn),
            message: format!(
                "{} asked for more {what} than [ike.limits] {name} = {n} allows: {answer:?}",
                remote.ip()
            ),
        });
    }

    /// `[ike.limits]` with what is in use and how often each was hit, for `vpnctl status`.
    pub fn limits_status(&self) -> serde_json::Value {
        use super::limits::limit_json;
        let (l, h) = (&self.settings.limits, &self.stats.limits);
        let per_conn = |f: &dyn Fn(ConnId) -> usize| (0..self.conns.len()).map(f).max();
        let ike = per_conn(&|c| {
            self.sas
                .values()
                .filter(|s| s.conn == c && s.state == IkeState::Established)
                .count()
        });
        let child = per_conn(&|c| self.children.values().filter(|k| k.conn == c).count());
        serde_json::json!({
            "half_open_per_peer": limit_json(l.half_open_per_peer, self.half_open.max_per_peer(), h.half_open_per_peer),
            "half_open_total": limit_json(l.half_open_total, self.half_open.total(), h.half_open_total),
            "ike_sas_per_conn": limit_json(l.ike_sas_per_conn, ike.unwrap_or(0), h.ike_sas_per_conn),
            "child_sas_per_conn": limit_json(l.child_sas_per_conn, child.unwrap_or(0), h.child_sas_per_conn),
            "dh_per_second": {
                "limit": l.dh_per_second, "burst": l.dh_burst,
                "hit_cookie_demanded": h.dh_cookie, "hit_dropped": h.dh_dropped,
            },
            "cookie_secret": {
                "lifetime_secs": l.cookie_secret_lifetime, "grace_secs": l.cookie_grace,
                "rotations": h.cookie_rotations, "stale_cookies": h.cookies_stale,
            },
        })
    }

    /// Tests: a new CHILD_SA on the connection's IKE SA, as a peer flooding CREATE_CHILD_SA
    /// would ask for (the core itself only does it when the connection has none).
    #[cfg(test)]
    pub(crate) fn create_extra_child(&mut self, conn: ConnId, now: Instant) {
        if let Some(spi) = self.established_sa(conn) {
            self.create_child(spi, now);
        }
    }

    /// The half-open accounting agrees with the SAs (tests): same SAs, same per-peer counts.
    #[cfg(test)]
    pub(crate) fn check_half_open(&self) {
        let (spis, per_peer) = self.half_open.snapshot();
        let mut want: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| s.state == IkeState::HalfOpen)
            .map(|(k, _)| *k)
            .collect();
        want.sort();
        assert_eq!(spis, want, "half-open SAs tracked vs. in the table");
        let mut count: std::collections::HashMap<IpAddr, usize> = Default::default();
        for spi in &want {
            *count.entry(self.sas[spi].remote.ip()).or_default() += 1;
        }
        assert_eq!(per_peer, count, "half-open SAs per peer");
    }

    /// The negotiated algorithms, for the log: `IKE AES-GCM-16-256/PRF-HMAC-SHA2-256/
    /// MODP-2048, ESP AES-GCM-16-128 no ESN, UDP-encapsulated`.
    fn describe(&self, spi: u64, child: ChildId) -> String {
        let (Some(sa), Some(c)) = (self.sas.get(&spi), self.children.get(&child)) else {
            return String::new();
        };
        let Some(s) = sa.suite else {
            return String::new();
        };
        let encr = match s.encr {
            crypto::Encr::AesGcm16 { key_bits } => format!("AES-GCM-16-{key_bits}"),
            crypto::Encr::AesCbc { key_bits } => format!("AES-CBC-{key_bits}"),
        };
        let integ = match s.integ {
            crypto::Integ::None => String::new(),
            i => format!("/{i:?}"),
        };
        let esp = match c.suite.cipher {
            Cipher::Aes128Gcm16 => "AES-GCM-16-128",
            Cipher::Aes256Gcm16 => "AES-GCM-16-256",
        };
        format!(
            "IKE {encr}{integ}/{:?}/{:?}, ESP {esp} {}{}",
            s.prf,
            s.dh,
            if c.suite.esn { "ESN" } else { "no ESN" },
            if sa.encap() {
                ", UDP-encapsulated"
            } else {
                ", raw ESP"
            }
        )
    }

    /// Both ends initiated at once (both bi-directional): two IKE SAs for one connection.
    /// Both sides keep the same one: the SA holding the lowest nonce is redundant and is
    /// deleted by its initiator, as with rekey collisions (RFC 7296 2.8.1); the data plane
    /// moves the connection's traffic to the survivor when the redundant CHILD_SA goes.
    fn settle_duplicates(&mut self, conn: ConnId, now: Instant) {
        let est: Vec<(u64, Vec<u8>, bool)> = self
            .sas
            .iter()
            // Not one we are deleting (`conn down` then `up`): it goes anyway, and taking it
            // for the survivor deleted the new one (seed 0x1400c7).
            .filter(|(_, s)| {
                s.conn == conn && s.state == IkeState::Established && !s.rekeyed && !s.closing()
            })
            .map(|(k, s)| (*k, s.ni.clone().min(s.nr.clone()), s.initiator))
            .collect();
        if est.len() < 2 {
            return;
        }
        let (redundant, _, ours) = est
            .iter()
            .min_by(|a, b| a.1.cmp(&b.1))
            .cloned()
            .expect("two");
        if ours {
            // Make before break: traffic moves to the survivor's CHILD_SA before the Delete
            // (the peer switches when it gets the Delete).
            let keep: Vec<(ChildId, ConnId)> = self
                .children
                .iter()
                .filter(|(_, c)| {
                    c.ike != redundant && c.conn == conn && c.state == ChildState::Active
                })
                .map(|(k, c)| (*k, c.conn))
                .collect();
            for (child, conn) in keep {
                self.events
                    .push_back(Event::ActivateOutbound { conn, child });
            }
            self.sas.get_mut(&redundant).expect("present").rekeyed = true;
            self.request(redundant, Pending::DeleteIke, now);
        }
    }

    fn create_child_response(
        &mut self,
        now: Instant,
        spi: u64,
        inner: &[RawPayload<'_>],
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
    ) {
        let conn = self.sas[&spi].conn;
        let remote = self.sas[&spi].remote;
        if self.sas[&spi].closing() {
            // `conn down` meanwhile: the peer's half goes with our Delete of the IKE SA.
            return;
        }
        if let Some(n) = first_error(inner) {
            let r = format!("new CHILD_SA with {} refused: {:?}", remote.ip(), n.ntype);
            self.status(conn, ConnStatus::Down, r);
            return;
        }
        let ts = self.accept_conn_ts(conn, inner);
        let cfg = &self.conns[conn].cfg;
        let too_many = ts == Err(ts::Refused::TooMany);
        let parsed = (|| {
            let chosen = wire::parse_sa(body_of(inner, PayloadType::SA)?).ok()?;
            let (suite, spi_out) =
                proposal::accept_esp(&cfg.esp, &chosen, dh.as_ref().map(|d| d.group()))?;
            let nr = body_of(inner, PayloadType::NONCE)
                .filter(|n| nonce_ok(n))?
                .to_vec();
            let g_ir = match &dh {
                Some(d) => Some(
                    d.agree(Ke::parse(body_of(inner, PayloadType::KE)?).ok()?.data)
                        .ok()?,
                ),
                None => None,
            };
            let (local_ts, peer_ts) = ts.ok()?;
            Some((suite, spi_out, nr, g_ir, local_ts, peer_ts))
        })();
        let Some((suite, spi_out, nr, g_ir, local_ts, peer_ts)) = parsed else {
            if too_many {
                self.ts_over_limit(conn, "the peer's");
            }
            let r = format!(
                "new CHILD_SA with {}: the peer's choice is not one we offered",
                remote.ip()
            );
            self.status(conn, ConnStatus::Down, r);
            return;
        };
        let neg = Negotiated {
            suite,
            num: 0,
            spi_in,
            spi_out,
            local_ts,
            peer_ts,
            dh: None,
            g_ir,
            ni,
            nr,
        };
        let id = self.install_child(spi, neg, now, None, true);
        self.activate(id);
        let what = self.describe(spi, id);
        self.status(
            conn,
            ConnStatus::Active,
            format!("new CHILD_SA with {}: {what}", remote.ip()),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn rekey_child_response(
        &mut self,
        now: Instant,
        spi: u64,
        inner: &[RawPayload<'_>],
        old: ChildId,
        spi_in: u32,
        ni: Vec<u8>,
        dh: Option<DhSecret>,
    ) {
        let conn = self.sas[&spi].conn;
        if let Some(n) = first_error(inner) {
            // TEMPORARY_FAILURE (a collision or the peer busy) or a refusal: try again
            // later; the old SA keeps working until its hard lifetime.
            if let Some(c) = self.children.get_mut(&old) {
                c.rekey_requested = false;
                c.rekey_at = now
                    + Duration::from_secs(if n.ntype == NotifyType::TEMPORARY_FAILURE {
                        2
                    } else {
                        30
                    });
            }
            return;
        }
        let cfg = &self.conns[conn].cfg;
        // Within what the old SA covers.
        let ts = self
            .children
            .get(&old)
            .map_or(Err(ts::Refused::Outside), |c| {
                accept_ts(inner, &c.local_ts, &c.peer_ts, self.settings.max_selectors)
            });
        let too_many = ts == Err(ts::Refused::TooMany);
        let parsed = (|| {
            let chosen = wire::parse_sa(body_of(inner, PayloadType::SA)?).ok()?;
            let (suite, spi_out) =
                proposal::accept_esp(&cfg.esp, &chosen, dh.as_ref().map(|d| d.group()))?;
            let nr = body_of(inner, PayloadType::NONCE)
                .filter(|n| nonce_ok(n))?
                .to_vec();
            let g_ir = match &dh {
                Some(d) => Some(
                    d.agree(Ke::parse(body_of(inner, PayloadType::KE)?).ok()?.data)
                        .ok()?,
                ),
                None => None,
            };
            let (local_ts, peer_ts) = ts.ok()?;
            Some((suite, spi_out, nr, g_ir, local_ts, peer_ts))
        })();
        let Some((suite, spi_out, nr, g_ir, local_ts, peer_ts)) = parsed else {
            if too_many {
                self.ts_over_limit(conn, "the peer's");
            }
            if let Some(c) = self.children.get_mut(&old) {
                c.rekey_requested = false;
                c.rekey_at = now + Duration::from_secs(30);
            }
            return;
        };
        let neg = Negotiated {
            suite,
            num: 0,
            spi_in,
            spi_out,
            local_ts,
            peer_ts,
            dh: None,
            g_ir,
            ni,
            nr,
        };
        let new = self.install_child(spi, neg, now, Some(old), true);
        self.stats.child_rekeyed += 1;
        // Collision (RFC 7296 2.8.1): the peer rekeyed the same SA and we answered.
        let peer_new = self.children.get(&old).and_then(|c| c.peer_rekey);
        if let Some(peer_new) = peer_new.filter(|p| self.children.contains_key(p)) {
            let ours = self.children[&new].min_nonce.clone();
            let theirs = self.children[&peer_new].min_nonce.clone();
            if ours < theirs {
                // Ours is redundant: we delete it; theirs replaces the old SA.
                self.activate(peer_new);
                self.request(spi, Pending::DeleteChildren(vec![new]), now);
                if let Some(c) = self.children.get_mut(&new) {
                    c.state = ChildState::Deleting;
                }
                self.retire(old, spi, now);
                return;
            }
            // Theirs is redundant: the peer deletes it.
        }
        self.activate(new);
        self.retire(old, spi, now);
    }

    /// The old SA of a completed rekey: delete it (the peer then stops using it too).
    fn retire(&mut self, old: ChildId, spi: u64, now: Instant) {
        if let Some(c) = self.children.get_mut(&old)
            && c.state != ChildState::Rekeyed
        {
            c.state = ChildState::Rekeyed;
            self.request(spi, Pending::DeleteChildren(vec![old]), now);
        }
    }

    fn rekey_ike_response(
        &mut self,
        now: Instant,
        spi: u64,
        inner: &[RawPayload<'_>],
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhSecret,
    ) {
        let conn = self.sas[&spi].conn;
        if first_error(inner).is_some() {
            // A collision the peer settled (TEMPORARY_FAILURE while it closes this SA): the
            // SA we answered carries the children. Otherwise try again a bit later.
            if let Some((p, _)) = self.sas[&spi].peer_rekey.clone()
                && self.sas.contains_key(&p)
            {
                self.move_children(spi, p);
                self.stats.ike_rekeyed += 1;
                self.await_peer_delete(spi, now);
            } else {
                self.sas.get_mut(&spi).expect("present").rekey_at =
                    Some(now + Duration::from_secs(10));
            }
            return;
        }
        let cfg = &self.conns[conn].cfg;
        let parsed = (|| {
            let chosen = wire::parse_sa(body_of(inner, PayloadType::SA)?).ok()?;
            let (suite, peer_spi) = proposal::accept_ike(&cfg.ike, &chosen)?;
            let peer_spi = u64::from_be_bytes(peer_spi.try_into().ok()?);
            let nr = body_of(inner, PayloadType::NONCE)
                .filter(|n| nonce_ok(n))?
                .to_vec();
            let ke = Ke::parse(body_of(inner, PayloadType::KE)?).ok()?;
            if ke.group != suite.dh.id() || suite.dh != dh.group() || peer_spi == 0 {
                return None;
            }
            let g_ir = dh.agree(ke.data).ok()?;
            Some((suite, peer_spi, nr, g_ir))
        })();
        let Some((suite, peer_spi, nr, g_ir)) = parsed else {
            self.sas.get_mut(&spi).expect("present").rekey_at = Some(now + Duration::from_secs(30));
            return;
        };
        let old = &self.sas[&spi];
        let old_prf = old.suite.expect("established").prf;
        let seed = skeyseed_rekey(
            old_prf,
            &old.keys.as_ref().expect("est").sk_d,
            &g_ir,
            &ni,
            &nr,
        );
        let keys = derive_ike_keys(&suite, &seed, &ni, &nr, new_spi, peer_spi);
        let Some(keys) = make_keys(&suite, keys, true) else {
            return;
        };
        let min_nonce = if ni < nr { ni.clone() } else { nr.clone() };
        let new = self.successor(
            spi, new_spi, new_spi, peer_spi, true, suite, keys, ni, nr, now,
        );
        if self.sas[&spi].closing() {
            // `conn down` while this rekey was in flight: the new SA goes too, or it would
            // outlive the connection (seed 0x140174).
            self.request(new, Pending::DeleteIke, now);
        }
        // Collision (RFC 7296 2.8.2): both rekeyed; the SA with the lowest nonce goes.
        let peer = self.sas.get(&spi).and_then(|s| s.peer_rekey.clone());
        self.sas.get_mut(&spi).expect("present").rekeyed = true;
        if let Some((peer_new, peer_min)) = peer.filter(|(p, _)| self.sas.contains_key(p))
            && min_nonce < peer_min
        {
            // Ours is redundant: we delete it; the peer, whose SA survives, deletes the
            // old one.
            self.move_children(spi, peer_new);
            self.stats.ike_rekeyed += 1;
            self.request(new, Pending::DeleteIke, now);
            return;
        }
        self.move_children(spi, new);
        self.stats.ike_rekeyed += 1;
        self.request(spi, Pending::DeleteIke, now);
    }

    /// An IKE SA replaced by the peer's rekey: the peer deletes it next. Should that Delete
    /// never come (lost for good, or the peer restarted meanwhile), the SA goes by itself
    /// after a grace longer than the peer's retransmissions, not at its hard lifetime hours
    /// later (found by `random_interleavings_always_converge`, seed 0x1401f0).
    fn await_peer_delete(&mut self, spi: u64, now: Instant) {
        const GRACE: Duration = Duration::from_secs(300);
        if let Some(sa) = self.sas.get_mut(&spi) {
            sa.rekeyed = true;
            sa.expire_at = Some(sa.expire_at.map_or(now + GRACE, |t| t.min(now + GRACE)));
        }
    }

    fn move_children(&mut self, from: u64, to: u64) {
        for c in self.children.values_mut() {
            if c.ike == from {
                c.ike = to;
            }
        }
    }

    /// A new IKE SA from a rekey, inheriting the connection and addresses.
    #[allow(clippy::too_many_arguments)]
    fn successor(
        &mut self,
        old: u64,
        our_spi: u64,
        spi_i: u64,
        spi_r: u64,
        initiator: bool,
        suite: IkeSuite,
        keys: Keys,
        ni: Vec<u8>,
        nr: Vec<u8>,
        now: Instant,
    ) -> u64 {
        let o = &self.sas[&old];
        let conn = o.conn;
        let life = self.conns[conn].cfg.lifetimes.ike;
        let sa = IkeSa {
            conn,
            spi_i,
            spi_r,
            initiator,
            state: IkeState::Established,
            suite: Some(suite),
            keys: Some(keys),
            ni,
            nr,
            dh: None,
            ke_group: None,
            cookie: None,
            init_req: vec![],
            init_resp: vec![],
            local: o.local,
            remote: o.remote,
            nat_local: o.nat_local,
            nat_peer: o.nat_peer,
            next_msg_id: 0,
            inflight: None,
            queue: VecDeque::new(),
            peer_expect: 0,
            last_resp: None,
            last_heard: now,
            created: now,
            rekey_at: Some(rekey_time(now, life)),
            expire_at: Some(now + life),
            next_keepalive: o.next_keepalive,
            peer_rekey: None,
            rekeyed: false,
        };
        self.sas.insert(our_spi, sa);
        our_spi
    }

    fn create_child_request(
        &mut self,
        now: Instant,
        spi: u64,
        h: &Header,
        inner: &[RawPayload<'_>],
    ) {
        let sa = &self.sas[&spi];
        if sa.state != IkeState::Established || sa.rekeyed || sa.closing() {
            // Rekeyed or closing: TEMPORARY_FAILURE (RFC 7296 2.25).
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::TEMPORARY_FAILURE,
                    &[],
                ))],
            );
            return;
        }
        let sa_body = body_of(inner, PayloadType::SA).and_then(|b| wire::parse_sa(b).ok());
        let is_ike = sa_body
            .as_ref()
            .is_some_and(|o| o.iter().any(|p| p.protocol == ProtocolId::IKE));
        if is_ike {
            self.rekey_ike_request(now, spi, h, inner);
            return;
        }
        let Some(ni) = body_of(inner, PayloadType::NONCE).filter(|n| nonce_ok(n)) else {
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::INVALID_SYNTAX,
                    &[],
                ))],
            );
            return;
        };
        // A rekey names the SA it replaces; without REKEY_SA it is a new CHILD_SA.
        let rekey =
            notify_of(inner, NotifyType::REKEY_SA).filter(|n| n.protocol == ProtocolId::ESP);
        let old = rekey.and_then(|n| {
            let s = u32::from_be_bytes(n.spi.try_into().ok()?);
            self.children
                .iter()
                .find(|(_, c)| c.ike == spi && c.spi_out == s)
                .map(|(k, _)| *k)
        });
        if rekey.is_none() {
            self.new_child_request(now, spi, h, inner, ni);
            return;
        }
        let Some(old) = old else {
            let t = NotifyType::CHILD_SA_NOT_FOUND;
            let spi_bytes: Vec<u8> = rekey.map(|n| n.spi.to_vec()).unwrap_or_default();
            let n = Notify {
                protocol: if rekey.is_some() {
                    ProtocolId::ESP
                } else {
                    ProtocolId(0)
                },
                spi: &spi_bytes,
                ntype: t,
                data: &[],
            };
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(n)],
            );
            return;
        };
        if !self.child_room(self.sas[&spi].conn, Some(old)) {
            self.refuse_create(spi, h.message_id, false, NotifyType::NO_ADDITIONAL_SAS);
            return;
        }
        if self.children[&old].state != ChildState::Active {
            // Already rekeyed by us (our Delete of it is on its way): RFC 7296 2.25.
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::TEMPORARY_FAILURE,
                    &[],
                ))],
            );
            return;
        }
        let ke = body_of(inner, PayloadType::KE).and_then(|b| Ke::parse(b).ok());
        let neg = self.negotiate_child(spi, inner, ke, false);
        let mut neg = match neg {
            Ok((n, _)) => n,
            Err(t) => {
                let data;
                let n = if t == NotifyType::INVALID_KE_PAYLOAD {
                    let cfg = &self.conns[self.sas[&spi].conn].cfg;
                    let g = cfg
                        .esp
                        .iter()
                        .flat_map(|p| p.dh.iter())
                        .next()
                        .map(|g| g.id())
                        .unwrap_or(0);
                    data = g.to_be_bytes();
                    Notify::new(t, &data)
                } else {
                    Notify::new(t, &[])
                };
                self.respond(
                    spi,
                    ExchangeType::CREATE_CHILD_SA,
                    h.message_id,
                    &[Payload::Notify(n)],
                );
                return;
            }
        };
        let nr = crypto::random_bytes(NONCE_LEN);
        neg.ni = ni.to_vec();
        neg.nr = nr.clone();
        let mut payloads = neg.response_payloads();
        payloads.insert(1, Payload::Nonce(&nr));
        let ke_out;
        if let Some(d) = &neg.dh {
            ke_out = (d.group().id(), d.public().to_vec());
            payloads.insert(
                2,
                Payload::Ke(Ke {
                    group: ke_out.0,
                    data: &ke_out.1,
                }),
            );
        }
        let sent = self.respond(spi, ExchangeType::CREATE_CHILD_SA, h.message_id, &payloads);
        drop(payloads);
        if !sent {
            return;
        }
        let new = self.install_child(spi, neg, now, Some(old), false);
        self.stats.child_rekeyed += 1;
        // Outbound switches when the peer deletes the old SA (or after a grace period).
        if let Some(c) = self.children.get_mut(&new) {
            c.activate_by = Some(now + self.settings.overlap * 3);
        }
        if let Some(c) = self.children.get_mut(&old) {
            c.peer_rekey = Some(new);
        }
        let _ = now;
    }

    /// A CHILD_SA the peer creates on an established IKE SA (RFC 7296 1.3.1), e.g. after
    /// deleting the previous one.
    fn new_child_request(
        &mut self,
        now: Instant,
        spi: u64,
        h: &Header,
        inner: &[RawPayload<'_>],
        ni: &[u8],
    ) {
        if !self.child_room(self.sas[&spi].conn, None) {
            self.refuse_create(spi, h.message_id, false, NotifyType::NO_ADDITIONAL_SAS);
            return;
        }
        let ke = body_of(inner, PayloadType::KE).and_then(|b| Ke::parse(b).ok());
        let mut neg = match self.negotiate_child(spi, inner, ke, false) {
            Ok((n, _)) => n,
            Err(t) => {
                let data;
                let n = if t == NotifyType::INVALID_KE_PAYLOAD {
                    let cfg = &self.conns[self.sas[&spi].conn].cfg;
                    let g = cfg
                        .esp
                        .iter()
                        .flat_map(|p| p.dh.iter())
                        .next()
                        .map(|g| g.id())
                        .unwrap_or(0);
                    data = g.to_be_bytes();
                    Notify::new(t, &data)
                } else {
                    Notify::new(t, &[])
                };
                self.respond(
                    spi,
                    ExchangeType::CREATE_CHILD_SA,
                    h.message_id,
                    &[Payload::Notify(n)],
                );
                return;
            }
        };
        let nr = crypto::random_bytes(NONCE_LEN);
        neg.ni = ni.to_vec();
        neg.nr = nr.clone();
        let mut payloads = neg.response_payloads();
        payloads.insert(1, Payload::Nonce(&nr));
        let ke_out;
        if let Some(d) = &neg.dh {
            ke_out = (d.group().id(), d.public().to_vec());
            payloads.insert(
                2,
                Payload::Ke(Ke {
                    group: ke_out.0,
                    data: &ke_out.1,
                }),
            );
        }
        let sent = self.respond(spi, ExchangeType::CREATE_CHILD_SA, h.message_id, &payloads);
        drop(payloads);
        if !sent {
            return;
        }
        let conn = self.sas[&spi].conn;
        let remote = self.sas[&spi].remote;
        let id = self.install_child(spi, neg, now, None, false);
        self.activate(id);
        let what = self.describe(spi, id);
        self.status(
            conn,
            ConnStatus::Active,
            format!("new CHILD_SA from {}: {what}", remote.ip()),
        );
    }

    fn rekey_ike_request(&mut self, now: Instant, spi: u64, h: &Header, inner: &[RawPayload<'_>]) {
        let conn = self.sas[&spi].conn;
        if !self.ike_room(conn) {
            // Rekeyed SAs the peer has not deleted yet: it may try again once it has.
            self.refuse_create(spi, h.message_id, true, NotifyType::TEMPORARY_FAILURE);
            return;
        }
        let cfg = &self.conns[conn].cfg;
        let parsed = (|| {
            let offers = wire::parse_sa(body_of(inner, PayloadType::SA)?).ok()?;
            let ni = body_of(inner, PayloadType::NONCE).filter(|n| nonce_ok(n))?;
            let ke = Ke::parse(body_of(inner, PayloadType::KE)?).ok()?;
            Some((offers, ni, ke))
        })();
        let Some((offers, ni, ke)) = parsed else {
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::INVALID_SYNTAX,
                    &[],
                ))],
            );
            return;
        };
        let Some((suite, num, peer_spi)) = proposal::choose_ike(&cfg.ike, &offers) else {
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::NO_PROPOSAL_CHOSEN,
                    &[],
                ))],
            );
            return;
        };
        if ke.group != suite.dh.id() {
            let g = suite.dh.id().to_be_bytes();
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::INVALID_KE_PAYLOAD,
                    &g,
                ))],
            );
            return;
        }
        let peer_spi = match <[u8; 8]>::try_from(peer_spi.as_slice()) {
            Ok(s) if u64::from_be_bytes(s) != 0 => u64::from_be_bytes(s),
            _ => {
                self.respond(
                    spi,
                    ExchangeType::CREATE_CHILD_SA,
                    h.message_id,
                    &[Payload::Notify(Notify::new(
                        NotifyType::INVALID_SYNTAX,
                        &[],
                    ))],
                );
                return;
            }
        };
        let Ok(dh) = DhSecret::generate(suite.dh) else {
            return;
        };
        let Ok(g_ir) = dh.agree(ke.data) else {
            self.respond(
                spi,
                ExchangeType::CREATE_CHILD_SA,
                h.message_id,
                &[Payload::Notify(Notify::new(
                    NotifyType::INVALID_SYNTAX,
                    &[],
                ))],
            );
            return;
        };
        let our_new = self.new_ike_spi();
        let nr = crypto::random_bytes(NONCE_LEN);
        let chosen = proposal::IkeProposal {
            encr: vec![suite.encr],
            integ: vec![suite.integ],
            prf: vec![suite.prf],
            dh: vec![suite.dh],
        }
        .to_wire(num, our_new.to_be_bytes().to_vec());
        let payloads = vec![
            Payload::Sa(vec![chosen]),
            Payload::Nonce(&nr),
            Payload::Ke(Ke {
                group: suite.dh.id(),
                data: dh.public(),
            }),
        ];
        let sent = self.respond(spi, ExchangeType::CREATE_CHILD_SA, h.message_id, &payloads);
        drop(payloads);
        if !sent {
            return;
        }
        let old = &self.sas[&spi];
        let seed = skeyseed_rekey(
            old.suite.expect("est").prf,
            &old.keys.as_ref().expect("est").sk_d,
            &g_ir,
            ni,
            &nr,
        );
        let keys = derive_ike_keys(&suite, &seed, ni, &nr, peer_spi, our_new);
        let Some(keys) = make_keys(&suite, keys, false) else {
            return;
        };
        let min_nonce = if ni < nr.as_slice() {
            ni.to_vec()
        } else {
            nr.clone()
        };
        let new = self.successor(
            spi,
            our_new,
            peer_spi,
            our_new,
            false,
            suite,
            keys,
            ni.to_vec(),
            nr,
            now,
        );
        let we_rekey_too = matches!(
            self.sas[&spi].inflight.as_ref().map(|i| &i.kind),
            Some(Pending::RekeyIke { .. })
        );
        self.sas.get_mut(&spi).expect("present").peer_rekey = Some((new, min_nonce));
        self.await_peer_delete(spi, now);
        if !we_rekey_too {
            self.move_children(spi, new);
            self.stats.ike_rekeyed += 1;
        }
        // The peer deletes the old IKE SA next.
    }

    fn informational_request(
        &mut self,
        now: Instant,
        spi: u64,
        h: &Header,
        inner: &[RawPayload<'_>],
    ) {
        let conn = self.sas[&spi].conn;
        let deletes: Vec<Delete<'_>> = inner
            .iter()
            .filter(|p| p.ptype == PayloadType::DELETE)
            .filter_map(|p| Delete::parse(p.body).ok())
            .collect();
        if deletes.iter().any(|d| d.protocol == ProtocolId::IKE) {
            // RFC 7296 1.4.1: answer with an empty INFORMATIONAL, then the SA is gone.
            self.respond(spi, ExchangeType::INFORMATIONAL, h.message_id, &[]);
            if let Some((p, _)) = self.sas[&spi].peer_rekey.clone()
                && self.sas.contains_key(&p)
                && self.children.values().any(|c| c.ike == spi)
            {
                // The peer's rekey of this SA survived a collision.
                self.move_children(spi, p);
                self.stats.ike_rekeyed += 1;
            }
            let moved = !self.children.values().any(|c| c.ike == spi);
            let other = self
                .sas
                .iter()
                .any(|(k, s)| *k != spi && s.conn == conn && s.state == IkeState::Established);
            if moved && other {
                self.drop_ike(spi, now, None);
            } else {
                let r = format!("peer {} deleted the IKE_SA", self.sas[&spi].remote.ip());
                self.drop_ike(spi, now, Some(&r));
            }
            return;
        }
        let mut ours: Vec<[u8; 4]> = vec![];
        let mut gone = vec![];
        for d in deletes
            .iter()
            .filter(|d| d.protocol == ProtocolId::ESP && d.spi_size == 4)
        {
            for s in &d.spis {
                let Ok(s) = <[u8; 4]>::try_from(*s) else {
                    continue;
                };
                let s = u32::from_be_bytes(s);
                let found = self
                    .children
                    .iter()
                    .find(|(_, c)| c.ike == spi && c.spi_out == s)
                    .map(|(k, _)| *k);
                if let Some(id) = found {
                    gone.push(id);
                }
            }
        }
        for id in &gone {
            let c = self.children.get_mut(id).expect("found");
            // RFC 7296 1.4.1: our inbound SPI in the answer, unless we asked to delete this
            // SA ourselves (then it goes when our request is answered).
            if matches!(c.state, ChildState::Active | ChildState::InboundOnly) {
                ours.push(c.spi_in.to_be_bytes());
            }
            c.state = ChildState::Deleting;
        }
        let payloads: Vec<Payload<'_>> = if ours.is_empty() {
            vec![]
        } else {
            vec![Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: ours.iter().map(|s| &s[..]).collect(),
            })]
        };
        self.respond(spi, ExchangeType::INFORMATIONAL, h.message_id, &payloads);
        drop(payloads);
        for id in gone {
            // The successor of a rekeyed SA starts sending now (make-before-break).
            let successor = self
                .children
                .iter()
                .find(|(_, c)| c.replaces == Some(id) && c.state == ChildState::InboundOnly)
                .map(|(k, _)| *k);
            if let Some(s) = successor {
                self.activate(s);
            }
            let replaced = self
                .children
                .values()
                .any(|c| c.replaces == Some(id) && c.state != ChildState::Deleting);
            self.removals.push((now + self.settings.overlap, conn, id));
            if !replaced
                && !self
                    .children
                    .iter()
                    .any(|(k, c)| *k != id && c.conn == conn && c.state != ChildState::Deleting)
            {
                let r = format!("peer {} deleted the CHILD_SA", self.sas[&spi].remote.ip());
                self.status(conn, ConnStatus::Down, r);
            }
        }
    }
}

/// A CHILD_SA agreed by the responder (or accepted by the initiator).
struct Negotiated {
    suite: EspSuite,
    num: u8,
    spi_in: u32,
    spi_out: u32,
    local_ts: Vec<Prefix>,
    peer_ts: Vec<Prefix>,
    dh: Option<DhSecret>,
    g_ir: Option<Zeroizing<Vec<u8>>>,
    ni: Vec<u8>,
    nr: Vec<u8>,
}

impl Negotiated {
    /// SA, TSi, TSr of the responder's answer (TSi is the peer's side).
    fn response_payloads(&self) -> Vec<Payload<'static>> {
        let chosen = proposal::EspProposal {
            encr: vec![self.suite.cipher],
            esn: vec![self.suite.esn],
            dh: self.suite.dh.into_iter().collect(),
        }
        .to_wire(self.num, self.spi_in, self.suite.dh.is_some());
        vec![
            Payload::Sa(vec![chosen]),
            Payload::TsI(ts::to_ts(&self.peer_ts)),
            Payload::TsR(ts::to_ts(&self.local_ts)),
        ]
    }
}

/// An encrypted message: IKE header (SPIs, exchange, flags, message ID), then one SK payload
/// sealing the payload chain `inner` whose first payload is `first`.
fn seal_message(
    cipher: &mut SkCipher,
    (ispi, rspi, exchange, f, msg_id): (u64, u64, ExchangeType, u8, u32),
    response: bool,
    first: PayloadType,
    inner: &[u8],
) -> Result<Vec<u8>, wire::EncodeError> {
    let body_len = cipher.sealed_len(inner.len());
    let sk_len: u16 = wire::field(4 + body_len, "SK payload")?;
    let total = wire::IKE_HEADER_LEN + 4 + body_len;
    let length: u32 = wire::field(total, "IKE message")?;
    let hdr = Header {
        ispi,
        rspi,
        next_payload: PayloadType::SK,
        major: 2,
        minor: 0,
        exchange,
        flags: if response { f | flags::RESPONSE } else { f },
        message_id: msg_id,
        length,
    };
    let mut out = Vec::with_capacity(total);
    hdr.emit(&mut out);
    wire::emit_generic_header(first, false, sk_len, &mut out);
    let aad = out.clone();
    cipher.seal(&aad, inner, &mut out);
    Ok(out)
}

fn make_keys(suite: &IkeSuite, k: IkeSaKeys, initiator: bool) -> Option<Keys> {
    let (ei, ai, er, ar) = (&k.sk_ei, &k.sk_ai, &k.sk_er, &k.sk_ar);
    let i2r = SkCipher::new(suite.encr, suite.integ, ei, ai).ok()?;
    let r2i = SkCipher::new(suite.encr, suite.integ, er, ar).ok()?;
    let (out, inb) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    let (sk_p_local, sk_p_peer) = if initiator {
        (k.sk_pi.clone(), k.sk_pr.clone())
    } else {
        (k.sk_pr.clone(), k.sk_pi.clone())
    };
    Some(Keys {
        sk_d: k.sk_d.clone(),
        sk_p_local,
        sk_p_peer,
        out,
        inb,
    })
}
