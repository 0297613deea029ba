//! The strongSwan harness proven on this machine: two charons (kernel-libipsec) in two network
//! namespaces joined by a veth bring up an IKEv2 PSK tunnel, pass pings through it, rekey the
//! CHILD_SA and the IKE_SA under traffic, and log keys that check out against RFC 7296's
//! derivations. A wrong PSK fails cleanly.
//!
//! ```text
//! A: lo 10.71.1.1, wire 172.31.71.1 ==veth== B: wire 172.31.71.2, lo 10.71.2.1
//! ```

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use ring::hmac;
use vpn_tests::{
    netns::NetNs,
    strongswan::{Charon, CharonSettings, IkeSaInfo, SwanConn, skip_unless_root},
    topology::Proc,
};

const A_OUT: &str = "172.31.71.1";
const B_OUT: &str = "172.31.71.2";
const A_IN: &str = "10.71.1.1";
const B_IN: &str = "10.71.2.1";
const A_NET: &str = "10.71.1.0/24";
const B_NET: &str = "10.71.2.0/24";
const IKE: &str = "ab";
const CHILD: &str = "net";

/// Two namespaces over a veth, each with its inner address on `lo` (this kernel has no dummy
/// interfaces). charon routes the peer's subnet into its `ipsec0` TUN device itself.
fn pair() -> Result<(NetNs, NetNs)> {
    let a = NetNs::new("swA")?;
    let b = NetNs::new("swB")?;
    for ns in [&a, &b] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    }
    a.ip(&[
        "link",
        "add",
        "wire",
        "type",
        "veth",
        "peer",
        "name",
        "wire",
        "netns",
        b.name(),
    ])?;
    for (ns, out, inner) in [(&a, A_OUT, A_IN), (&b, B_OUT, B_IN)] {
        ns.ip(&["addr", "add", &format!("{out}/24"), "dev", "wire"])?;
        ns.ip(&["link", "set", "wire", "up"])?;
        ns.ip(&["addr", "add", &format!("{inner}/32"), "dev", "lo"])?;
    }
    Ok((a, b))
}

fn conn(local: &str, remote: &str, psk: &str, lnet: &str, rnet: &str) -> SwanConn {
    let mut c = SwanConn::new(IKE, local, remote, psk).ts(&[lnet], &[rnet]);
    c.child = CHILD.into();
    c.proposals = "aes256gcm16-prfsha256-modp2048".into();
    c.esp_proposals = "aes128gcm16".into();
    c
}

fn installed(sas: &[IkeSaInfo]) -> Option<(u64, u32, u32)> {
    let ike = sas
        .iter()
        .find(|s| s.name == IKE && s.state == "ESTABLISHED")?;
    let child = ike.installed_child(CHILD)?;
    Some((ike.spi_i, child.spi_in, child.spi_out))
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

/// A ping inside `ns`, running in the background; its output is read when it ends.
struct Pinger(Proc);

impl Pinger {
    fn start(ns: &NetNs, count: u32, interval: &str) -> Result<Pinger> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "ping", "-n", "-q", "-I", A_IN])
            .args(["-i", interval, "-W", "1", "-c", &count.to_string(), B_IN])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok(Pinger(Proc(child)))
    }

    /// Waits (bounded) for the end; returns (transmitted, received).
    fn finish(mut self, timeout: Duration) -> Result<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        while self.0.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("ping still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        if let Some(mut s) = self.0.0.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no ping summary in {out:?}"))?;
        let num = |what: &str| -> Result<u32> {
            line.split(", ")
                .find(|p| p.contains(what))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{what} in {line:?}"))
        };
        Ok((num("transmitted")?, num("received")?))
    }
}

#[test]
fn strongswan_pair_tunnel_rekey_and_keys() -> Result<()> {
    if !skip_unless_root("strongswan_pair_tunnel_rekey_and_keys") {
        return Ok(());
    }
    let started = Instant::now();
    let (a, b) = pair()?;
    let settings = CharonSettings {
        key_oracle: true,
        ..Default::default()
    };
    let psk = "correct horse battery staple";
    // Every optional knob on A's side, so that their rendering is proven to load.
    let mut conn_a = conn(A_OUT, B_OUT, psk, A_NET, B_NET);
    conn_a.dpd_delay = Some(30);
    conn_a.dpd_action = "restart".into();
    conn_a.rekey_time = Some(3600);
    conn_a.child_rekey_time = Some(1200);
    conn_a.encap = true;
    conn_a.local_port = Some(500);
    conn_a.remote_port = Some(500);
    let ca = Charon::start(&a, &settings, &[conn_a])?;
    let cb = Charon::start(&b, &settings, &[conn(B_OUT, A_OUT, psk, B_NET, A_NET)])?;

    // The PID the harness holds (and kills on drop) is charon's own: every wrapper exec'd.
    for c in [&ca, &cb] {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", c.pid()))?;
        assert_eq!(comm.trim(), "charon");
    }

    ca.initiate(CHILD, IKE, Duration::from_secs(15))
        .with_context(|| format!("initiate; responder log:\n{}", cb.log()))?;
    let ike_a = ca.wait_established(IKE, Duration::from_secs(10))?;
    let ike_b = cb.wait_established(IKE, Duration::from_secs(10))?;
    assert!(ike_a.initiator && !ike_b.initiator);
    assert_eq!((ike_a.spi_i, ike_a.spi_r), (ike_b.spi_i, ike_b.spi_r));
    assert_eq!(
        (ike_a.encr_alg.as_str(), ike_a.encr_keysize),
        ("AES_GCM_16", 256)
    );
    assert_eq!(ike_a.dh_group, "MODP_2048");
    let child_a = ike_a.installed_child(CHILD).context("child on A")?.clone();
    let child_b = ike_b.installed_child(CHILD).context("child on B")?.clone();
    assert_eq!(child_a.spi_in, child_b.spi_out);
    assert_eq!(child_a.spi_out, child_b.spi_in);
    assert_eq!(
        (child_a.encr_alg.as_str(), child_a.encr_keysize),
        ("AES_GCM_16", 128)
    );
    assert_eq!(child_a.local_ts, vec![A_NET.to_string()]);
    assert_eq!(child_a.remote_ts, vec![B_NET.to_string()]);
    eprintln!(
        "established in {:?}: IKE {:016x}/{:016x}, ESP in {:08x} out {:08x}",
        started.elapsed(),
        ike_a.spi_i,
        ike_a.spi_r,
        child_a.spi_in,
        child_a.spi_out
    );

    // Traffic through libipsec: charon routed B's subnet into ipsec0 (table 220, src A_IN).
    let out = a.exec(&[
        "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-I", A_IN, B_IN,
    ])?;
    ensure!(out.contains("3 received"), "ping through the tunnel: {out}");
    let sas = ca.list_sas()?;
    let c = sas[0].installed_child(CHILD).context("child")?;
    ensure!(
        c.packets_out >= 3 && c.packets_in >= 3 && c.bytes_out > 0,
        "ESP counters after 3 pings: {c:?}"
    );

    // Rekey the CHILD_SA, then the IKE_SA, under traffic (20 pings/s for 8 s).
    let pinger = Pinger::start(&a, 160, "0.05")?;
    std::thread::sleep(Duration::from_millis(500));
    let (old_ike, old_in, old_out) = installed(&sas).context("installed")?;
    ca.rekey_child(CHILD)?;
    let sas = ca.wait_sas(Duration::from_secs(10), |sas| {
        installed(sas).is_some_and(|(_, i, o)| i != old_in && o != old_out)
    })?;
    let (_, new_in, new_out) = installed(&sas).expect("checked");
    eprintln!(
        "CHILD_SA rekeyed: in {old_in:08x} -> {new_in:08x}, out {old_out:08x} -> {new_out:08x}"
    );
    cb.wait_sas(Duration::from_secs(10), |sas| {
        installed(sas).is_some_and(|(_, i, o)| i == new_out && o == new_in)
    })?;
    std::thread::sleep(Duration::from_secs(1));
    ca.rekey_ike(IKE)?;
    let sas = ca.wait_sas(Duration::from_secs(10), |sas| {
        installed(sas).is_some_and(|(s, _, _)| s != old_ike)
    })?;
    let (new_ike, _, _) = installed(&sas).expect("checked");
    eprintln!("IKE_SA rekeyed: {old_ike:016x} -> {new_ike:016x}");
    cb.wait_sas(Duration::from_secs(10), |sas| {
        installed(sas).is_some_and(|(s, _, _)| s == new_ike)
    })?;
    let (sent, received) = pinger.finish(Duration::from_secs(30))?;
    eprintln!("pings during the rekeys: {received}/{sent}");
    ensure!(
        received * 10 >= sent * 9,
        "too many pings lost across the rekeys: {received}/{sent}"
    );
    let sas = ca.list_sas()?;
    let ike = sas
        .iter()
        .find(|s| s.name == IKE && s.state == "ESTABLISHED")
        .context("IKE_SA")?;
    let c = ike.installed_child(CHILD).context("child")?;
    ensure!(
        c.spi_in == new_in && c.packets_in > 0 && c.packets_out > 0,
        "the rekeyed CHILD_SA carried the pings: {c:?}"
    );

    // The key oracle: both ends logged the same keys, and they follow RFC 7296 2.14.
    let ka = ca.key_oracle();
    let kb = cb.key_oracle();
    ensure!(
        ka.ike.len() >= 2 && kb.ike.len() >= 2,
        "IKE key sets (initial + rekey): A {} B {}",
        ka.ike.len(),
        kb.ike.len()
    );
    let (i, r) = (&ka.ike[0], &kb.ike[0]);
    assert_eq!(i.dh_secret.len(), 256, "MODP_2048 shared secret");
    for (what, k, len) in [
        ("SKEYSEED", &i.skeyseed, 32),
        ("SK_d", &i.sk_d, 32),
        ("SK_ei", &i.sk_ei, 36),
        ("SK_er", &i.sk_er, 36),
        ("SK_pi", &i.sk_pi, 32),
        ("SK_pr", &i.sk_pr, 32),
    ] {
        assert_eq!(k.len(), len, "{what} length");
    }
    assert!(i.sk_ai.is_empty(), "AEAD: no integrity keys");
    assert_eq!(i.dh_secret, r.dh_secret);
    assert_eq!(i.skeyseed, r.skeyseed);
    assert_eq!((&i.sk_d, &i.sk_ei, &i.sk_er), (&r.sk_d, &r.sk_ei, &r.sk_er));
    assert_eq!((&i.sk_pi, &i.sk_pr), (&r.sk_pi, &r.sk_pr));
    assert_eq!(i.spi_i, Some(old_ike));
    assert_eq!((i.spi_i, i.spi_r), (r.spi_i, r.spi_r));
    let ni = i.nonce_i.as_deref().context("Ni")?;
    let nr = i.nonce_r.as_deref().context("Nr")?;
    assert_eq!(Some(ni), r.nonce_i.as_deref());
    assert_eq!(Some(nr), r.nonce_r.as_deref());
    assert_eq!((ni.len(), nr.len()), (32, 32));
    // SKEYSEED = prf(Ni | Nr, g^ir); SK_d = first block of prf+(SKEYSEED, Ni|Nr|SPIi|SPIr).
    let nonces = [ni, nr].concat();
    assert_eq!(hmac256(&nonces, &[&i.dh_secret]), i.skeyseed);
    let spis = [
        i.spi_i.context("SPIi")?.to_be_bytes(),
        i.spi_r.context("SPIr")?.to_be_bytes(),
    ]
    .concat();
    assert_eq!(hmac256(&i.skeyseed, &[&nonces, &spis, &[1]]), i.sk_d);
    // Our key schedule (vpn_userspace::ike::crypto) reproduces charon's keys: a live
    // known-answer test of SKEYSEED, prf+ and the SK_* split.
    {
        use vpn_userspace::ike::crypto::{
            DhGroup, Encr, IkeSuite, Integ, Prf, child_keymat, derive_ike_keys, skeyseed,
        };
        let suite = IkeSuite {
            encr: Encr::AesGcm16 { key_bits: 256 },
            integ: Integ::None,
            prf: Prf::HmacSha256,
            dh: DhGroup::Modp2048,
        };
        let seed = skeyseed(Prf::HmacSha256, ni, nr, &i.dh_secret);
        assert_eq!(&seed[..], &i.skeyseed[..], "our SKEYSEED");
        let ours = derive_ike_keys(
            &suite,
            &seed,
            ni,
            nr,
            i.spi_i.context("SPIi")?,
            i.spi_r.context("SPIr")?,
        );
        for (what, a, b) in [
            ("SK_d", &ours.sk_d, &i.sk_d),
            ("SK_ei", &ours.sk_ei, &i.sk_ei),
            ("SK_er", &ours.sk_er, &i.sk_er),
            ("SK_pi", &ours.sk_pi, &i.sk_pi),
            ("SK_pr", &ours.sk_pr, &i.sk_pr),
        ] {
            assert_eq!(&a[..], &b[..], "our {what} differs from charon's");
        }
        let km = child_keymat(Prf::HmacSha256, &ours.sk_d, None, ni, nr, 40);
        let first = &ka.children[0];
        assert_eq!(&km[..20], &first.encr_i[..], "our CHILD_SA initiator key");
        assert_eq!(&km[20..], &first.encr_r[..], "our CHILD_SA responder key");
    }
    // The rekeyed IKE_SA's keys differ.
    assert_ne!(ka.ike[1].sk_d, i.sk_d);
    assert_eq!(ka.ike[1].sk_d, kb.ike[1].sk_d);

    // CHILD_SAs: the first came with IKE_AUTH (seed Ni | Nr), the second with the rekey.
    ensure!(
        ka.children.len() >= 2 && kb.children.len() >= 2,
        "CHILD key sets: A {:?} B {:?}",
        ka.children,
        kb.children
    );
    let first = &ka.children[0];
    assert!(first.initiator);
    assert_eq!(first.seed, nonces);
    assert_eq!(first.spi_in, Some(old_in));
    assert_eq!(first.spi_out, Some(old_out));
    // KEYMAT = prf+(SK_d, Ni | Nr): initiator's key and salt first.
    let t1 = hmac256(&i.sk_d, &[&nonces, &[1]]);
    assert_eq!(first.encr_i, t1[..20]);
    for (ca_keys, cb_keys) in ka.children.iter().zip(&kb.children) {
        assert_eq!(ca_keys.encr_i.len(), 20, "AES-128-GCM key + salt");
        assert_eq!(ca_keys.encr_r.len(), 20);
        assert!(ca_keys.integ_i.is_empty());
        assert_eq!(ca_keys.spi_out, cb_keys.spi_in);
        assert_eq!(ca_keys.encr_out(), cb_keys.encr_in());
        assert_eq!(ca_keys.encr_in(), cb_keys.encr_out());
    }
    assert_eq!(ka.children[1].spi_in, Some(new_in));
    assert_ne!(ka.children[1].encr_i, first.encr_i);

    ca.terminate_ike(IKE)?;
    cb.wait_sas(Duration::from_secs(10), |sas| {
        !sas.iter().any(|s| s.state == "ESTABLISHED")
    })?;
    eprintln!("strongswan pair done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn strongswan_pair_wrong_psk_fails() -> Result<()> {
    if !skip_unless_root("strongswan_pair_wrong_psk_fails") {
        return Ok(());
    }
    let (a, b) = pair()?;
    let settings = CharonSettings {
        // Give up quickly if something goes unanswered.
        retransmit_tries: Some(2),
        retransmit_timeout: Some(1.0),
        ..Default::default()
    };
    let ca = Charon::start(
        &a,
        &settings,
        &[conn(A_OUT, B_OUT, "not the secret", A_NET, B_NET)],
    )?;
    let cb = Charon::start(
        &b,
        &settings,
        &[conn(B_OUT, A_OUT, "the secret", B_NET, A_NET)],
    )?;
    let res = ca.initiate(CHILD, IKE, Duration::from_secs(10));
    ensure!(res.is_err(), "initiate with a wrong PSK succeeded");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for c in [&ca, &cb] {
            ensure!(
                c.established(IKE)?.is_none(),
                "an IKE_SA got established with mismatched PSKs"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = cb.log();
    ensure!(
        log.contains("MAC mismatched") && log.contains("AUTH_FAILED"),
        "the responder's log names no authentication failure:\n{log}"
    );
    let log = ca.log();
    ensure!(
        log.contains("AUTHENTICATION_FAILED"),
        "the initiator's log does not show the AUTHENTICATION_FAILED notify:\n{log}"
    );
    Ok(())
}
