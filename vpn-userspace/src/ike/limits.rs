//! What one peer may cost the IKE core: half-open IKE SAs per peer address and in all, IKE
//! SAs and CHILD_SAs per connection, and Diffie-Hellman work per second (each IKE_SA_INIT
//! answered costs one on the single IKE thread). Also the rotating cookie secret (RFC 7296
//! 2.6) and the O(1) half-open accounting. No clock here either: `now` comes from the caller.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::crypto::{self, Prf, ct_eq};

/// The `[ike.limits]` section. Every limit is at least 1: 0 would refuse every peer.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Half-open IKE SAs (IKE_SA_INIT answered, no IKE_AUTH yet) from one peer address; more
    /// IKE_SA_INITs from it are dropped. Each holds the peer's request (up to 64 KiB) and
    /// cost a DH (strongSwan's `block_threshold` is 5).
    pub half_open_per_peer: usize,
    /// Half-open IKE SAs from all peers; more IKE_SA_INITs are dropped.
    pub half_open_total: usize,
    /// IKE SAs of one connection (duplicates and rekeyed ones not yet deleted included).
    /// Beyond it a peer's IKE_AUTH gets NO_ADDITIONAL_SAS and the new IKE SA is deleted,
    /// and a peer's IKE SA rekey gets TEMPORARY_FAILURE.
    pub ike_sas_per_conn: usize,
    /// CHILD_SAs of one connection, over all its IKE SAs, that the peer may create; beyond
    /// it CREATE_CHILD_SA (new or rekey) and the CHILD_SA of IKE_AUTH get NO_ADDITIONAL_SAS.
    /// Bounds the node-wide SA slots one peer can take.
    pub child_sas_per_conn: usize,
    /// IKE_SA_INIT answers (each computes a DH) per second, as a token bucket; beyond it a
    /// request without a valid cookie is asked for one, one with a cookie is dropped.
    pub dh_per_second: u32,
    /// The bucket's depth: answers that may come at once after a quiet spell.
    pub dh_burst: u32,
    /// Seconds a cookie secret is used before a new one replaces it (RFC 7296 2.6).
    pub cookie_secret_lifetime: u64,
    /// Seconds cookies of the previous secret stay valid after it is replaced: an
    /// initiator's answer to a cookie sent just before the change.
    pub cookie_grace: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            half_open_per_peer: 5,
            half_open_total: 500,
            ike_sas_per_conn: 4,
            child_sas_per_conn: 4,
            dh_per_second: 100,
            dh_burst: 200,
            cookie_secret_lifetime: 60,
            cookie_grace: 10,
        }
    }
}

impl Limits {
    /// Checks the values; the error is (field, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [
            ("half_open_per_peer", self.half_open_per_peer),
            ("half_open_total", self.half_open_total),
            ("ike_sas_per_conn", self.ike_sas_per_conn),
            ("child_sas_per_conn", self.child_sas_per_conn),
            ("dh_per_second", self.dh_per_second as usize),
            ("dh_burst", self.dh_burst as usize),
        ] {
            if v == 0 {
                return Err((
                    field,
                    "must be at least 1 (0 would refuse every peer)".into(),
                ));
            }
        }
        if self.ike_sas_per_conn < 2 {
            return Err((
                "ike_sas_per_conn",
                "must be at least 2 (an IKE SA rekey holds the old and the new one at once)".into(),
            ));
        }
        if self.half_open_total < self.half_open_per_peer {
            return Err((
                "half_open_total",
                format!(
                    "must be at least half_open_per_peer ({})",
                    self.half_open_per_peer
                ),
            ));
        }
        if !(1..=86400).contains(&self.cookie_secret_lifetime) {
            return Err(("cookie_secret_lifetime", "1 to 86400 seconds".into()));
        }
        if self.cookie_grace > self.cookie_secret_lifetime {
            return Err((
                "cookie_grace",
                format!(
                    "at most cookie_secret_lifetime ({} seconds)",
                    self.cookie_secret_lifetime
                ),
            ));
        }
        Ok(())
    }
}

/// How often each limit was hit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitStats {
    pub half_open_per_peer: u64,
    pub half_open_total: u64,
    pub ike_sas_per_conn: u64,
    pub child_sas_per_conn: u64,
    /// Over the DH rate: asked for a cookie instead.
    pub dh_cookie: u64,
    /// Over the DH rate with a valid cookie: dropped.
    pub dh_dropped: u64,
    pub cookie_rotations: u64,
    /// Cookies of a replaced secret after the grace period, or of no secret we know.
    pub cookies_stale: u64,
}

/// The responder's half-open IKE SAs, counted as they come and go.
#[derive(Default)]
pub struct HalfOpen {
    /// (peer, initiator SPI) -> our SPI: to answer retransmitted IKE_SA_INITs.
    by_init: HashMap<(SocketAddr, u64), u64>,
    by_spi: HashMap<u64, (SocketAddr, u64)>,
    per_peer: HashMap<IpAddr, usize>,
}

impl HalfOpen {
    pub fn get(&self, remote: SocketAddr, spi_i: u64) -> Option<u64> {
        self.by_init.get(&(remote, spi_i)).copied()
    }

    pub fn insert(&mut self, remote: SocketAddr, spi_i: u64, ours: u64) {
        if let Some(old) = self.by_init.insert((remote, spi_i), ours) {
            // Never happens (a known pair is answered from the cache); keeps the counts true.
            self.by_spi.remove(&old);
            self.dec(remote.ip());
        }
        self.by_spi.insert(ours, (remote, spi_i));
        *self.per_peer.entry(remote.ip()).or_default() += 1;
    }

    /// Forgets one (established, failed or timed out); no-op for an SA that is not half-open.
    pub fn remove(&mut self, ours: u64) {
        if let Some(key) = self.by_spi.remove(&ours) {
            self.by_init.remove(&key);
            self.dec(key.0.ip());
        }
    }

    fn dec(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_peer.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&ip);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.by_spi.len()
    }

    pub fn of_peer(&self, ip: IpAddr) -> usize {
        self.per_peer.get(&ip).copied().unwrap_or(0)
    }

    /// The most any one peer holds (for the operator).
    pub fn max_per_peer(&self) -> usize {
        self.per_peer.values().copied().max().unwrap_or(0)
    }

    /// Our SPIs of every half-open SA, and the per-peer counts (tests).
    #[cfg(test)]
    pub fn snapshot(&self) -> (Vec<u64>, HashMap<IpAddr, usize>) {
        assert_eq!(self.by_init.len(), self.by_spi.len());
        let mut spis: Vec<u64> = self.by_spi.keys().copied().collect();
        spis.sort();
        (spis, self.per_peer.clone())
    }
}

struct Secret {
    /// The cookie's first octet (RFC 7296 2.6 `VersionIDofSecret`).
    version: u8,
    key: Zeroizing<Vec<u8>>,
}

impl Secret {
    fn new(version: u8) -> Secret {
        Secret {
            version,
            key: Zeroizing::new(crypto::random_bytes(32)),
        }
    }

    fn cookie(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        let ip = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut c = vec![self.version];
        c.extend_from_slice(&Prf::HmacSha256.compute(&self.key, &[ni, &ip, &spi_i.to_be_bytes()]));
        c
    }
}

/// Stateless cookies (RFC 7296 2.6): `version | HMAC(secret, Ni | IPi | SPIi)`. The secret
/// is replaced every `lifetime`; the previous one is honoured for `grace` more.
pub struct CookieJar {
    lifetime: Duration,
    grace: Duration,
    cur: Secret,
    /// When `cur` was first used (the clock is the caller's).
    born: Option<Instant>,
    /// The previous secret and the end of its grace period.
    prev: Option<(Secret, Instant)>,
}

/// A cookie as checked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CookieCheck {
    Valid,
    /// Of a secret replaced more than the grace period ago (or never ours).
    Stale,
    Invalid,
}

impl CookieJar {
    pub fn new(lifetime: Duration, grace: Duration) -> CookieJar {
        CookieJar {
            lifetime,
            grace,
            cur: Secret::new(1),
            born: None,
            prev: None,
        }
    }

    /// Replaces the secret if its time is up; true if it did.
    fn tick(&mut self, now: Instant) -> bool {
        let born = *self.born.get_or_insert(now);
        let end = born + self.lifetime;
        if now < end {
            return false;
        }
        let next = Secret::new(self.cur.version.wrapping_add(1));
        let old = std::mem::replace(&mut self.cur, next);
        // Valid for the grace period after its scheduled end, however late we notice.
        self.prev = Some((old, end + self.grace));
        self.born = Some(now);
        true
    }

    /// The cookie to send; true if the secret was replaced first.
    pub fn make(&mut self, now: Instant, ni: &[u8], ip: IpAddr, spi_i: u64) -> (Vec<u8>, bool) {
        let rotated = self.tick(now);
        (self.cur.cookie(ni, ip, spi_i), rotated)
    }

    /// Checks a returned cookie; the bool: the secret was replaced first.
    pub fn check(
        &mut self,
        now: Instant,
        got: &[u8],
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> (CookieCheck, bool) {
        let rotated = self.tick(now);
        let Some(&version) = got.first() else {
            return (CookieCheck::Invalid, rotated);
        };
        let secret = if version == self.cur.version {
            &self.cur
        } else {
            match &self.prev {
                Some((s, until)) if s.version == version && now < *until => s,
                _ => return (CookieCheck::Stale, rotated),
            }
        };
        let ok = ct_eq(got, &secret.cookie(ni, ip, spi_i));
        let r = if ok {
            CookieCheck::Valid
        } else {
            CookieCheck::Invalid
        };
        (r, rotated)
    }
}

/// IKE_SA_INIT answers computing a DH, per second (a token bucket).
pub struct DhBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl DhBucket {
    pub fn new(rate: u32, burst: u32) -> DhBucket {
        DhBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: None,
        }
    }

    /// Whether one more DH may be computed now (and takes it).
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One limit as `vpnctl status` shows it.
pub fn limit_json(limit: impl serde::Serialize, in_use: usize, hit: u64) -> serde_json::Value {
    serde_json::json!({ "limit": limit, "in_use": in_use, "hit": hit })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "192.0.2.7";

    fn ip() -> IpAddr {
        IP.parse().unwrap()
    }

    #[test]
    fn half_open_counts_follow_inserts_and_removes() {
        let mut h = HalfOpen::default();
        let a: SocketAddr = format!("{IP}:500").parse().unwrap();
        let a2: SocketAddr = format!("{IP}:4500").parse().unwrap();
        let b: SocketAddr = "198.51.100.9:500".parse().unwrap();
        h.insert(a, 1, 11);
        h.insert(a2, 2, 12);
        h.insert(b, 1, 13);
        assert_eq!((h.total(), h.of_peer(ip()), h.max_per_peer()), (3, 2, 2));
        assert_eq!(h.get(a, 1), Some(11));
        h.remove(11);
        h.remove(11);
        h.remove(99);
        assert_eq!((h.total(), h.of_peer(ip())), (2, 1));
        assert_eq!(h.get(a, 1), None);
        h.remove(12);
        h.remove(13);
        assert_eq!(h.total(), 0);
        assert!(h.snapshot().1.is_empty(), "no peer left behind");
    }

    #[test]
    fn cookies_rotate_and_old_ones_last_the_grace_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut j = CookieJar::new(s(60), s(10));
        let (c1, _) = j.make(t0, b"nonce", ip(), 7);
        let ok = |j: &mut CookieJar, c: &[u8], t| j.check(t, c, b"nonce", ip(), 7).0;
        assert_eq!(ok(&mut j, &c1, t0 + s(59)), CookieCheck::Valid);
        assert_eq!(
            j.check(t0, &c1, b"nonce", ip(), 8).0,
            CookieCheck::Invalid,
            "bound to the SPI"
        );
        // Replaced at 60 s (noticed late, at 65 s): the old cookie lasts until 70 s.
        let (c2, rotated) = j.make(t0 + s(65), b"nonce", ip(), 7);
        assert!(rotated);
        assert_ne!(c1[0], c2[0], "a new version octet");
        assert_eq!(ok(&mut j, &c1, t0 + s(69)), CookieCheck::Valid);
        assert_eq!(ok(&mut j, &c1, t0 + s(70)), CookieCheck::Stale);
        assert_eq!(ok(&mut j, &c2, t0 + s(70)), CookieCheck::Valid);
        assert_eq!(ok(&mut j, &[], t0 + s(70)), CookieCheck::Invalid);
    }

    #[test]
    fn dh_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = DhBucket::new(10, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(150)));
        // Never more than the burst after a long pause.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn every_limit_is_checked() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = [
            Limits {
                half_open_per_peer: 0,
                ..Limits::default()
            },
            Limits {
                half_open_total: 4,
                ..Limits::default()
            },
            Limits {
                ike_sas_per_conn: 1,
                ..Limits::default()
            },
            Limits {
                child_sas_per_conn: 0,
                ..Limits::default()
            },
            Limits {
                dh_burst: 0,
                ..Limits::default()
            },
            Limits {
                cookie_secret_lifetime: 0,
                ..Limits::default()
            },
            Limits {
                cookie_grace: 61,
                ..Limits::default()
            },
        ];
        let fields: Vec<&str> = bad.iter().map(|l| l.validate().unwrap_err().0).collect();
        assert_eq!(
            fields,
            [
                "half_open_per_peer",
                "half_open_total",
                "ike_sas_per_conn",
                "child_sas_per_conn",
                "dh_burst",
                "cookie_secret_lifetime",
                "cookie_grace"
            ]
        );
    }
}
