//! vpnd's IKEv2 control plane against strongSwan 5.9.8 (charon with kernel-libipsec) as a real
//! peer (see `vpn_tests::interop`): East is vpnd with its VLAN tenant host 10.1.0.5, West is
//! charon with 10.2.0.1 on `lo`. ESP is UDP-encapsulated (libipsec fakes NAT detection) and
//! has no ESN.
//!
//! Covered: vpnd initiating and charon initiating (vpnd response-only), two proposal sets
//! (AES-GCM IKE SA with MODP-2048; AES-CBC + HMAC-SHA-256 IKE SA with ECP-256 and PFS on CHILD
//! rekeys), pings and TCP both ways, CHILD and IKE rekeys from both ends under a 100/s ping
//! with no loss, DPD noticing a dead peer, and a wrong PSK failing cleanly on both sides.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vpn_tests::{
    interop::{
        EAST_HOST, Pinger, SWAN_CHILD, SWAN_IKE, SwanSite, VPND_CONN, WEST_HOST, iperf_tcp,
        ping_all, swan_installed, tail,
    },
    strongswan::{CharonSettings, SwanConn, skip_unless_root},
    topology::IkeKeying,
};

const PSK: &str = "a long shared secret for the strongSwan interop tests";

/// Proposal set A: AES-256-GCM IKE SA, PRF HMAC-SHA-256, MODP-2048; ESP AES-128-GCM.
fn set_a(initiator: &str) -> (IkeKeying, SwanConn) {
    let mut k = IkeKeying::proposals(&["aes256gcm16-prfsha256-modp2048"], &["aes128gcm16-noesn"]);
    k.psk = PSK.into();
    k.initiator = initiator.into();
    let mut c = SwanSite::swan_conn(PSK);
    c.proposals = "aes256gcm16-prfsha256-modp2048".into();
    c.esp_proposals = "aes128gcm16".into();
    (k, c)
}

/// Proposal set B: AES-128-CBC + HMAC-SHA-256 IKE SA with ECP-256; ESP AES-256-GCM with PFS
/// (ECP-256) on CHILD_SA rekeys.
fn set_b(initiator: &str) -> (IkeKeying, SwanConn) {
    let mut k = IkeKeying::proposals(&["aes128-sha256-ecp256"], &["aes256gcm16-noesn-ecp256"]);
    k.psk = PSK.into();
    k.initiator = initiator.into();
    let mut c = SwanSite::swan_conn(PSK);
    c.proposals = "aes128-sha256-ecp256".into();
    c.esp_proposals = "aes256gcm16-ecp256".into();
    (k, c)
}

/// Pings both ways and a TCP transfer both ways; charon's CHILD_SA counted ESP both ways.
fn check_traffic(site: &SwanSite) -> Result<()> {
    ping_all(&site.eh, None, WEST_HOST, 5).context("ping eh -> West")?;
    ping_all(&site.west, Some(WEST_HOST), EAST_HOST, 5).context("ping West -> eh")?;
    iperf_tcp(&site.west, WEST_HOST, &site.eh, None, 3)?;
    iperf_tcp(&site.eh, EAST_HOST, &site.west, Some(WEST_HOST), 3)?;
    let sas = site.charon().list_sas()?;
    let ike = sas
        .iter()
        .find(|s| s.name == SWAN_IKE && s.state == "ESTABLISHED")
        .context("charon's IKE_SA")?;
    let c = ike
        .installed_child(SWAN_CHILD)
        .context("charon's CHILD_SA")?;
    eprintln!(
        "charon's CHILD_SA: {} packets in, {} out, encap {}",
        c.packets_in, c.packets_out, c.encap
    );
    ensure!(
        c.packets_in > 1000 && c.packets_out > 1000 && c.encap,
        "charon's CHILD_SA carried the transfers in UDP: {c:?}"
    );
    Ok(())
}

/// vpnd stops politely: charon sees its IKE_SA deleted.
fn check_polite_stop(site: &mut SwanSite) -> Result<()> {
    let stats = site.vpnd.as_mut().context("vpnd")?.stop();
    eprintln!("vpnd: {stats}");
    site.charon()
        .wait_sas(Duration::from_secs(5), |sas| {
            !sas.iter()
                .any(|s| s.name == SWAN_IKE && s.state == "ESTABLISHED")
        })
        .context("charon still has the IKE_SA after vpnd's SIGTERM")?;
    Ok(())
}

#[test]
fn ike_vpnd_initiates_to_charon_gcm_modp2048() -> Result<()> {
    if !skip_unless_root("ike_vpnd_initiates_to_charon_gcm_modp2048") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = SwanSite::build()?;
    let (keying, conn) = set_a("bi-directional");
    site.start_charon(&CharonSettings::default(), conn)?;
    site.start_vpnd(&keying)?;
    let (spi_i, spi_r, esp_in, esp_out) = site.wait_tunnel(Duration::from_secs(20))?;
    eprintln!(
        "up in {:?}: IKE {spi_i:016x}/{spi_r:016x}, charon ESP in {esp_in:08x} out {esp_out:08x}",
        started.elapsed()
    );
    let ike = site
        .charon()
        .established(SWAN_IKE)?
        .context("charon's IKE_SA")?;
    ensure!(!ike.initiator, "charon responded: {ike:?}");
    assert_eq!(
        (ike.encr_alg.as_str(), ike.encr_keysize),
        ("AES_GCM_16", 256)
    );
    assert_eq!(ike.prf_alg, "PRF_HMAC_SHA2_256");
    assert_eq!(ike.dh_group, "MODP_2048");
    let child = ike.installed_child(SWAN_CHILD).context("child")?;
    assert_eq!(
        (child.encr_alg.as_str(), child.encr_keysize),
        ("AES_GCM_16", 128)
    );
    assert_eq!(child.local_ts, ["10.2.0.0/24"]);
    assert_eq!(child.remote_ts, ["10.1.0.0/24"]);
    check_traffic(&site)?;
    check_polite_stop(&mut site)?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn ike_charon_initiates_to_response_only_vpnd_cbc_ecp256() -> Result<()> {
    if !skip_unless_root("ike_charon_initiates_to_response_only_vpnd_cbc_ecp256") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = SwanSite::build()?;
    let (keying, conn) = set_b("response-only");
    site.start_vpnd(&keying)?;
    site.start_charon(&CharonSettings::default(), conn)?;
    // response-only: vpnd must not initiate by itself.
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        site.charon().list_sas()?.is_empty(),
        "a response-only vpnd initiated"
    );
    site.charon()
        .initiate(SWAN_CHILD, SWAN_IKE, Duration::from_secs(15))
        .with_context(|| format!("swanctl --initiate; vpnd:\n{}", site.vpnd_log()))?;
    let (spi_i, spi_r, ..) = site.wait_tunnel(Duration::from_secs(10))?;
    eprintln!(
        "up in {:?}: IKE {spi_i:016x}/{spi_r:016x}",
        started.elapsed()
    );
    let active = site.vpnd().wait_active(Duration::ZERO)?;
    ensure!(active.contains("responder"), "vpnd responded: {active}");
    let ike = site
        .charon()
        .established(SWAN_IKE)?
        .context("charon's IKE_SA")?;
    ensure!(ike.initiator, "charon initiated: {ike:?}");
    assert_eq!((ike.encr_alg.as_str(), ike.encr_keysize), ("AES_CBC", 128));
    assert_eq!(ike.prf_alg, "PRF_HMAC_SHA2_256");
    assert_eq!(ike.dh_group, "ECP_256");
    let child = ike.installed_child(SWAN_CHILD).context("child")?;
    assert_eq!(
        (child.encr_alg.as_str(), child.encr_keysize),
        ("AES_GCM_16", 256)
    );
    check_traffic(&site)?;
    check_polite_stop(&mut site)?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

/// Waits until charon's installed CHILD_SA (and IKE_SA SPIs) satisfy `pred` and vpnd's current
/// CHILD_SA mirrors it; returns charon's (SPIi, SPIr, ESP in, ESP out).
fn wait_state(
    site: &SwanSite,
    what: &str,
    pred: impl Fn((u64, u64, u32, u32)) -> bool,
) -> Result<(u64, u64, u32, u32)> {
    let t = Instant::now();
    let mut last = None;
    site.charon()
        .wait_sas(Duration::from_secs(10), |sas| {
            last = swan_installed(sas);
            last.is_some_and(|s| pred(s) && site.vpnd().current_spis() == Some((s.3, s.2)))
        })
        .with_context(|| {
            format!(
                "{what}: charon {last:x?}, vpnd {:x?}\nvpnd:\n{}\ncharon:\n{}",
                site.vpnd().current_spis(),
                tail(&site.vpnd_log(), 40),
                tail(&site.charon_log(), 40)
            )
        })?;
    let s = last.expect("checked");
    eprintln!(
        "{what} in {:?}: IKE {:016x}/{:016x}, charon ESP in {:08x} out {:08x}",
        t.elapsed(),
        s.0,
        s.1,
        s.2,
        s.3
    );
    Ok(s)
}

#[test]
fn ike_rekeys_from_both_ends_under_traffic_lose_nothing() -> Result<()> {
    if !skip_unless_root("ike_rekeys_from_both_ends_under_traffic_lose_nothing") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = SwanSite::build()?;
    let (keying, conn) = set_b("bi-directional");
    site.start_charon(&CharonSettings::default(), conn)?;
    site.start_vpnd(&keying)?;
    let s0 = site.wait_tunnel(Duration::from_secs(20))?;
    ping_all(&site.eh, None, WEST_HOST, 2)?;

    // 100 pings/s each way for 10 s, while both ends rekey the CHILD_SA, then the IKE_SA.
    let pinger = Pinger::start(&site.eh, None, WEST_HOST, 1000, "0.01")?;
    let back = Pinger::start(&site.west, Some(WEST_HOST), EAST_HOST, 1000, "0.01")?;
    std::thread::sleep(Duration::from_millis(700));
    site.charon().rekey_child(SWAN_CHILD)?;
    let s1 = wait_state(&site, "CHILD_SA rekeyed by charon", |s| {
        s.2 != s0.2 && s.3 != s0.3
    })?;
    std::thread::sleep(Duration::from_millis(700));
    site.signal_vpnd(libc::SIGUSR1)?;
    let s2 = wait_state(&site, "CHILD_SA rekeyed by vpnd", |s| {
        s.2 != s1.2 && s.3 != s1.3
    })?;
    std::thread::sleep(Duration::from_millis(700));
    site.charon().rekey_ike(SWAN_IKE)?;
    let s3 = wait_state(&site, "IKE_SA rekeyed by charon", |s| {
        (s.0, s.1) != (s2.0, s2.1)
    })?;
    std::thread::sleep(Duration::from_millis(700));
    site.signal_vpnd(libc::SIGUSR2)?;
    let s4 = wait_state(&site, "IKE_SA rekeyed by vpnd", |s| {
        (s.0, s.1) != (s3.0, s3.1)
    })?;
    let rekeys_done = started.elapsed();
    let (sent, received) = pinger.finish(Duration::from_secs(30))?;
    eprintln!("pings across the four rekeys (done at {rekeys_done:?}): {received}/{sent}");
    ensure!(
        sent == 1000 && received == sent,
        "pings eh -> West lost across the rekeys: {received}/{sent}\nvpnd:\n{}",
        tail(&site.vpnd_log(), 40)
    );
    let (sent, received) = back.finish(Duration::from_secs(10))?;
    eprintln!("pings West -> eh across the four rekeys: {received}/{sent}");
    ensure!(
        sent == 1000 && received == sent,
        "pings West -> eh lost across the rekeys: {received}/{sent}\nvpnd:\n{}",
        tail(&site.vpnd_log(), 40)
    );
    // The IKE rekeys kept the CHILD_SA; both IKE rekeys made new IKE SPIs.
    assert_eq!((s3.2, s3.3), (s2.2, s2.3));
    assert_eq!((s4.2, s4.3), (s2.2, s2.3));
    let ike = site.charon().established(SWAN_IKE)?.context("IKE_SA")?;
    assert_eq!((ike.spi_i, ike.spi_r), (s4.0, s4.1));
    assert_eq!(ike.dh_group, "ECP_256");
    // vpnd: three CHILD_SAs carried traffic in turn (initial and two rekeys).
    let out = site.vpnd().outbound_children();
    ensure!(out.len() >= 3, "vpnd's outbound CHILD_SAs: {out:?}");
    // PFS: every CHILD_SA rekey carried a KE payload (ECP-256).
    let log = site.charon_log();
    let rekeys: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CREATE_CHILD_SA request") && l.contains("REKEY_SA"))
        .collect();
    ensure!(
        rekeys.len() >= 2 && rekeys.iter().all(|l| l.contains(" KE ")),
        "CHILD_SA rekeys with PFS: {rekeys:#?}"
    );
    // Still working afterwards, both ways.
    ping_all(&site.eh, None, WEST_HOST, 3)?;
    ping_all(&site.west, Some(WEST_HOST), EAST_HOST, 3)?;
    // Old SAs went away on both sides: one CHILD_SA and one IKE_SA left at charon.
    site.charon()
        .wait_sas(Duration::from_secs(10), |sas| {
            sas.len() == 1 && sas[0].children.len() == 1
        })
        .context("old SAs left at charon")?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn ike_dpd_notices_dead_charon() -> Result<()> {
    if !skip_unless_root("ike_dpd_notices_dead_charon") {
        return Ok(());
    }
    let mut site = SwanSite::build()?;
    let (mut keying, conn) = set_a("bi-directional");
    keying.dpd = Some(r#"{ action = "clear", interval = 2, timeout = 6 }"#.into());
    site.start_charon(&CharonSettings::default(), conn)?;
    site.start_vpnd(&keying)?;
    site.wait_tunnel(Duration::from_secs(20))?;
    ping_all(&site.eh, None, WEST_HOST, 2)?;
    // Dead without a word: SIGKILL, so no Delete goes out.
    let charon = site.charon.take().context("charon")?;
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(charon.pid() as i32, libc::SIGKILL) };
    drop(charon);
    let killed = Instant::now();
    let down = format!("conn {VPND_CONN}: DOWN");
    let line = site
        .vpnd()
        .log
        .wait_for(Duration::from_secs(15), |l| l.contains(&down))
        .with_context(|| format!("no DOWN within 15 s:\n{}", site.vpnd_log()))?;
    let after = killed.elapsed();
    eprintln!("DOWN {after:?} after the kill: {line}");
    ensure!(line.contains("did not answer"), "DOWN reason: {line}");
    ensure!(
        after < Duration::from_secs(12),
        "DPD (interval 2 s, timeout 6 s) took {after:?}"
    );
    // action = clear: the CHILD_SA goes.
    site.vpnd()
        .log
        .wait_for(Duration::from_secs(3), |l| {
            l.contains(VPND_CONN) && l.contains("removed")
        })
        .context("CHILD_SA not removed after DOWN with action clear")?;
    Ok(())
}

#[test]
fn ike_wrong_psk_fails_cleanly_both_ways() -> Result<()> {
    if !skip_unless_root("ike_wrong_psk_fails_cleanly_both_ways") {
        return Ok(());
    }
    let mut site = SwanSite::build()?;
    let settings = CharonSettings {
        retransmit_tries: Some(2),
        retransmit_timeout: Some(1.0),
        ..Default::default()
    };
    let (mut keying, conn) = set_a("bi-directional");
    keying.psk = "not the secret charon has".into();
    site.start_charon(&settings, conn)?;

    // vpnd initiates with the wrong key: charon refuses it.
    site.start_vpnd(&keying)?;
    let down = format!("conn {VPND_CONN}: DOWN");
    let line = site
        .vpnd()
        .log
        .wait_for(Duration::from_secs(15), |l| l.contains(&down))
        .with_context(|| format!("vpnd did not go DOWN:\n{}", site.vpnd_log()))?;
    eprintln!("vpnd (initiator): {line}");
    ensure!(
        line.contains("AUTHENTICATION_FAILED"),
        "DOWN reason: {line}"
    );
    let log = site.charon_log();
    ensure!(
        log.contains("MAC mismatched") && log.contains("N(AUTH_FAILED)"),
        "charon (responder) names no authentication failure:\n{}",
        tail(&log, 40)
    );
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !site.vpnd().log.contains("ACTIVE") && !site.vpnd().log.contains("inbound installed"),
        "vpnd installed something:\n{}",
        site.vpnd_log()
    );
    ensure!(
        site.charon().established(SWAN_IKE)?.is_none(),
        "charon established an IKE_SA"
    );
    ensure!(
        ping_all(&site.eh, None, WEST_HOST, 1).is_err(),
        "traffic passed without a tunnel"
    );
    let _ = site.vpnd.as_mut().context("vpnd")?.stop();

    // charon initiates with its key to a response-only vpnd holding another one.
    keying.initiator = "response-only".into();
    site.start_vpnd(&keying)?;
    let res = site
        .charon()
        .initiate(SWAN_CHILD, SWAN_IKE, Duration::from_secs(10));
    ensure!(
        res.is_err(),
        "swanctl --initiate succeeded with a wrong PSK"
    );
    let vpnd_line = site
        .vpnd()
        .log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("AUTHENTICATION_FAILED")
        })
        .with_context(|| {
            format!(
                "vpnd (responder) logged no AUTHENTICATION_FAILED:\n{}",
                site.vpnd_log()
            )
        })?;
    eprintln!("vpnd (responder): {vpnd_line}");
    let log = site.charon_log();
    ensure!(
        log.contains("received AUTHENTICATION_FAILED"),
        "charon (initiator) did not receive AUTHENTICATION_FAILED:\n{}",
        tail(&log, 40)
    );
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !site.vpnd().log.contains("ACTIVE") && !site.vpnd().log.contains("inbound installed"),
        "vpnd installed something:\n{}",
        site.vpnd_log()
    );
    ensure!(
        site.charon().established(SWAN_IKE)?.is_none(),
        "charon established an IKE_SA"
    );
    Ok(())
}

#[test]
fn ike_charon_answers_our_cookie_and_invalid_ke() -> Result<()> {
    if !skip_unless_root("ike_charon_answers_our_cookie_and_invalid_ke") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = SwanSite::build()?;
    // vpnd demands a cookie from every IKE_SA_INIT (threshold 0) and accepts only MODP-2048;
    // charon guesses ECP-256 first, so it needs the cookie and then INVALID_KE_PAYLOAD.
    let (mut keying, mut conn) = set_a("response-only");
    keying.ike = "cookie_threshold = 0\n".into();
    conn.proposals = "aes256gcm16-prfsha256-ecp256-modp2048".into();
    site.start_vpnd(&keying)?;
    site.start_charon(&CharonSettings::default(), conn)?;
    site.charon()
        .initiate(SWAN_CHILD, SWAN_IKE, Duration::from_secs(15))
        .with_context(|| format!("swanctl --initiate; vpnd:\n{}", site.vpnd_log()))?;
    site.wait_tunnel(Duration::from_secs(10))?;
    let ike = site
        .charon()
        .established(SWAN_IKE)?
        .context("charon's IKE_SA")?;
    assert_eq!(ike.dh_group, "MODP_2048");
    let log = site.charon_log();
    ensure!(
        log.contains("N(COOKIE)"),
        "charon saw our COOKIE:\n{}",
        tail(&log, 40)
    );
    ensure!(
        log.contains("N(INVAL_KE)"),
        "charon saw our INVALID_KE_PAYLOAD:\n{}",
        tail(&log, 40)
    );
    ping_all(&site.eh, None, WEST_HOST, 3).context("ping eh -> West")?;
    check_polite_stop(&mut site)?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

#[test]
fn ike_charon_deletes_and_recreates_the_child_sa() -> Result<()> {
    if !skip_unless_root("ike_charon_deletes_and_recreates_the_child_sa") {
        return Ok(());
    }
    let started = Instant::now();
    let mut site = SwanSite::build()?;
    let (keying, conn) = set_b("bi-directional");
    site.start_vpnd(&keying)?;
    site.start_charon(&CharonSettings::default(), conn)?;
    let (spi_i, spi_r, first_in, _) = site.wait_tunnel(Duration::from_secs(10))?;
    ping_all(&site.eh, None, WEST_HOST, 3).context("ping before")?;
    // charon deletes the CHILD_SA only: vpnd removes it, the IKE SA stays.
    site.charon()
        .swanctl(&["--terminate", "--child", SWAN_CHILD, "--timeout", "5"])?;
    site.vpnd()
        .log
        .wait_for(Duration::from_secs(10), |l| {
            l.contains("deleted the CHILD_SA")
        })
        .with_context(|| format!("vpnd saw the Delete:\n{}", tail(&site.vpnd_log(), 20)))?;
    // charon creates a new one on the same IKE SA (CREATE_CHILD_SA without REKEY_SA; with a
    // key exchange, as its proposal names ECP-256).
    site.charon()
        .initiate(SWAN_CHILD, SWAN_IKE, Duration::from_secs(15))?;
    let (i2, r2, second_in, _) = wait_state(&site, "new CHILD_SA", |s| s.2 != first_in)?;
    assert_eq!((i2, r2), (spi_i, spi_r), "same IKE SA");
    site.vpnd()
        .log
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("ACTIVE: new CHILD_SA from")
        })
        .with_context(|| tail(&site.vpnd_log(), 20))?;
    assert_ne!(second_in, first_in);
    ping_all(&site.eh, None, WEST_HOST, 3).context("ping after")?;
    ping_all(&site.west, Some(WEST_HOST), EAST_HOST, 3).context("ping back")?;
    check_polite_stop(&mut site)?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}
