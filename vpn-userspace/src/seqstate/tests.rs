use std::{collections::HashMap, net::IpAddr, os::unix::fs::PermissionsExt};

use vpn_common::{DropReason, ReplayWindow};

use super::*;
use crate::esp::{Cipher, Outer};

fn key(b: u8) -> SaKey {
    SaKey::from_keymat(Cipher::Aes128Gcm16, &[b; 20]).unwrap()
}

fn side(direction: Direction, esn: bool, min_block: u64) -> Side {
    Side {
        sa: "east-west".into(),
        direction,
        key: KeyId::of(&key(1)),
        spi: 0xe0f0,
        esn,
        min_block,
    }
}

fn outbound(esn: bool) -> Arc<OutboundSa> {
    Arc::new(OutboundSa::new(
        0xe0f0,
        &key(1),
        esn,
        Outer {
            src: IpAddr::from([192, 0, 2, 1]),
            dst: IpAddr::from([192, 0, 2, 2]),
            udp: None,
            ttl: 64,
        },
    ))
}

/// An SA as vpnd installs it: resumed where its reservation starts.
fn resumed(r: &Reservation, esn: bool) -> Arc<OutboundSa> {
    let sa = outbound(esn);
    let s = r.start();
    if s.refused {
        sa.refuse();
    } else {
        sa.resume(s.last, s.ceiling);
    }
    sa
}

/// State files in memory. Every write checks the ordering the design rests on: a ceiling
/// reaches the disk before the workers may use it (`watch`'s published ceiling is still
/// below what is being written). Writes fail while `fail` is set.
#[derive(Default)]
struct FakeStore {
    files: HashMap<(Direction, KeyId), Record>,
    writes: Vec<Record>,
    fail: bool,
    watch: Option<Arc<OutboundSa>>,
}

impl Store for FakeStore {
    fn path(&self, d: Direction, k: KeyId) -> PathBuf {
        PathBuf::from(format!("/fake/{}-{k}.seq", d.name()))
    }
    fn load(&mut self, d: Direction, k: KeyId) -> Result<Option<Record>, StateError> {
        Ok(self.files.get(&(d, k)).cloned())
    }
    fn store(&mut self, r: &Record) -> Result<(), StateError> {
        if self.fail {
            return Err(StateError::Io {
                path: self.path(r.direction, r.key_id),
                what: "writing",
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        if let Some(sa) = &self.watch
            && !r.clean
        {
            assert!(
                sa.ceiling() < r.ceiling,
                "ceiling {} published before {} was on disk",
                sa.ceiling(),
                r.ceiling
            );
        }
        self.files.insert((r.direction, r.key_id), r.clone());
        self.writes.push(r.clone());
        Ok(())
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vpnd-seqstate-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Removes a test directory however the test ends.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(ceiling: u64, clean: bool) -> Record {
    let s = side(Direction::Out, false, 64);
    s.record(ceiling, clean)
}

#[test]
fn record_round_trip() {
    for r in [
        record(0, false),
        record(1 << 20, true),
        Record {
            direction: Direction::In,
            key_id: KeyId::of(&key(9)),
            sa: printable("odd \"name\" \\ with spaces\nand a line"),
            spi: 0xffff_ffff,
            esn: true,
            ceiling: u64::MAX,
            clean: false,
        },
    ] {
        let text = r.encode();
        assert_eq!(Record::decode(&text), Ok(r.clone()), "{text}");
    }
    assert_eq!(printable("a\"b\\c\nd é"), "a?b?c?d ?");
    let text = record(4096, false).encode();
    assert!(
        text.contains("\nceiling 4096\n") && text.contains("do not edit"),
        "{text}"
    );
}

#[test]
fn damaged_records_are_refused_with_a_reason() {
    let good = record(123_456, false).encode();
    let cases: Vec<(String, &str)> = vec![
        (good.replace("ceiling 123456", "ceiling 123"), "checksum"),
        (good.replace("ceiling 123456", "ceiling 923456"), "checksum"),
        (good[..good.len() / 2].to_string(), "check"),
        (String::new(), "check"),
        (good.replace("\ncheck ", "\ncheck 0"), "checksum"),
    ];
    for (text, want) in cases {
        let e = Record::decode(&text).unwrap_err();
        assert!(e.contains(want), "{e:?} for {text:?}");
    }
    // A well-formed body with an unknown field (a checksum that matches it).
    let body = "format 1\ndirection out\nkey_id 0011223344556677\nsa \"x\"\nspi 0x00000100\n\
                esn false\nceiling 5\nclean false\nextra 1\n";
    let text = format!("{body}check {}\n", check_of(body));
    assert!(
        Record::decode(&text)
            .unwrap_err()
            .contains("unknown field extra")
    );
    let body = body
        .replace("extra 1\n", "")
        .replace("format 1", "format 2");
    let text = format!("{body}check {}\n", check_of(&body));
    assert!(Record::decode(&text).unwrap_err().contains("format 2"));
}

#[test]
fn key_ids_differ_per_key_and_name_no_key_bytes() {
    let a = KeyId::of(&key(1));
    assert_eq!(a, KeyId::of(&key(1)));
    assert_ne!(a, KeyId::of(&key(2)));
    assert_eq!(a.to_string().len(), 16);
    assert!(!a.to_string().contains("0101"), "not the key itself");
}

#[test]
fn next_ceiling_keeps_half_a_block_ahead_and_stops_at_the_limit() {
    let lim = u32::MAX as u64;
    // (need, ceiling, limit, block) -> next
    type Case = ((u64, u64, u64, u64), Option<u64>);
    let table: [Case; 9] = [
        ((0, 0, lim, 64), Some(64)),
        ((31, 64, lim, 64), None),     // 33 left: more than half a block
        ((32, 64, lim, 64), Some(96)), // 32 left: extend from what is used
        ((64, 64, lim, 64), Some(128)),
        ((200, 64, lim, 64), Some(264)), // wanted far above (inbound jump)
        ((lim - 10, lim - 5, lim, 64), Some(lim)), // clamped: never past 2^32-1
        ((lim, lim, lim, 64), None),     // exhausted
        ((u64::MAX - 3, u64::MAX - 1, u64::MAX, 64), Some(u64::MAX)),
        ((5, 1000, lim, 64), None), // never lowered
    ];
    for ((need, ceiling, limit, block), want) in table {
        let got = next_ceiling(need, ceiling, limit, block);
        assert_eq!(
            got, want,
            "need {need} ceiling {ceiling} limit {limit} block {block}"
        );
        if let Some(n) = got {
            assert!(n > ceiling && n <= limit);
        }
    }
}

#[test]
fn state_file_round_trip_on_disk() {
    let d = temp_dir("rt");
    let _c = Cleanup(d.clone());
    let mut st = StateDir::open(&d).unwrap();
    assert_eq!(
        std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let k = KeyId::of(&key(1));
    assert_eq!(st.load(Direction::Out, k).unwrap(), None);
    let r = record(77_777, false);
    st.store(&r).unwrap();
    let path = st.path(Direction::Out, k);
    assert_eq!(path, d.join(format!("out-{k}.seq")));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(st.load(Direction::Out, k).unwrap(), Some(r.clone()));
    assert_eq!(st.load(Direction::In, k).unwrap(), None, "per direction");
    // Replaced, not appended; no temporary file left.
    st.store(&record(88_888, true)).unwrap();
    assert_eq!(st.load(Direction::Out, k).unwrap().unwrap().ceiling, 88_888);
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    // A second vpnd on the same directory is refused while the first holds it.
    match StateDir::open(&d) {
        Err(StateError::Locked { path }) => assert_eq!(path, d.join("lock")),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second holder got the lock"),
    }
    drop(st);
    StateDir::open(&d).expect("the lock goes with its holder");
}

/// The reservation writes the first block before anything may use it, and the file is what
/// the next start reads: a restart continues above everything the first run could send.
#[test]
fn restart_continues_above_the_reservation_never_below() {
    let d = temp_dir("restart");
    let _c = Cleanup(d.clone());
    let mut st = StateDir::open(&d).unwrap();
    let r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(
        r.start(),
        Start {
            last: 0,
            ceiling: 64,
            refused: false
        }
    );
    let sa = resumed(&r, false);
    let mut sent = Vec::new();
    for _ in 0..40 {
        sent.push(sa.next_seq().unwrap());
    }
    // "kill -9": no finish. The next run starts at the ceiling on disk.
    drop(r);
    let r2 = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(r2.start().last, 64);
    let sa2 = resumed(&r2, false);
    let next = sa2.next_seq().unwrap();
    assert_eq!(next, 65);
    assert!(sent.iter().all(|&s| s < next), "a number repeats");
    // A clean stop records the exact number, and the next start skips nothing.
    let mut r2 = r2;
    sa2.next_seq().unwrap();
    assert_eq!(r2.finish(sa2.as_ref(), &mut st).unwrap(), Some(66));
    let rec = st.load(Direction::Out, r2.side().key).unwrap().unwrap();
    assert!(rec.clean && rec.ceiling == 66);
    let r3 = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(resumed(&r3, false).next_seq(), Ok(67));
}

/// A state file that cannot be trusted refuses the SA: nothing is sent, nothing accepted,
/// and the file is left as it is for the operator (never silently restarted at 0).
#[test]
fn untrusted_state_refuses_the_sa() {
    let d = temp_dir("corrupt");
    let _c = Cleanup(d.clone());
    let mut st = StateDir::open(&d).unwrap();
    let k = KeyId::of(&key(1));
    let path = st.path(Direction::Out, k);
    let corrupt = "format 1\nceiling 99\n";
    std::fs::write(&path, corrupt).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        st.load(Direction::Out, k),
        Err(StateError::Corrupt { .. })
    ));
    let e = st.load(Direction::Out, k).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
    let mut r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert!(r.start().refused);
    let sa = resumed(&r, false);
    assert_eq!(sa.next_seq(), Err(DropReason::SaStateRefused));
    // The keeper leaves it alone, and so does a clean stop.
    assert_eq!(r.tick(sa.as_ref(), &mut st, Instant::now()).unwrap(), None);
    assert_eq!(r.finish(sa.as_ref(), &mut st).unwrap(), None);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), corrupt);

    // Writable by others: refused too, with the mode in the message.
    st.store(&record(5000, false)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = st.load(Direction::Out, k).unwrap_err();
    assert!(
        matches!(e, StateError::Permissions { mode: 0o666, .. }),
        "{e}"
    );
    assert!(
        Reservation::open(&mut st, side(Direction::Out, false, 64))
            .start()
            .refused
    );
    // A file of another key renamed into place.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut other = record(5000, false);
    other.key_id = KeyId::of(&key(2));
    std::fs::write(&path, other.encode()).unwrap();
    assert!(
        st.load(Direction::Out, k)
            .unwrap_err()
            .to_string()
            .contains("copied or renamed")
    );
    // A directory where the file should be.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(
        Reservation::open(&mut st, side(Direction::Out, false, 64))
            .start()
            .refused
    );

    // Inbound: nothing is accepted.
    let ki = KeyId::of(&key(1));
    std::fs::write(st.path(Direction::In, ki), "garbage").unwrap();
    let ri = Reservation::open(&mut st, side(Direction::In, false, 64));
    assert!(ri.start().refused);
    assert_eq!(ri.start().ceiling, 0);
}

/// Without ESN no block reaches past 2^32-1 (RFC 4303 3.3.3); a file at the limit leaves an
/// exhausted SA. With ESN the counter goes on past 2^32.
#[test]
fn esn_and_non_esn_limits() {
    let lim = u32::MAX as u64;
    let mut st = FakeStore::default();
    st.store(&record(lim - 10, false)).unwrap();
    let r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(r.start().last, lim - 10);
    assert_eq!(r.start().ceiling, lim, "clamped to the limit");
    let sa = resumed(&r, false);
    for s in lim - 9..=lim {
        assert_eq!(sa.next_seq(), Ok(s));
    }
    assert_eq!(sa.next_seq(), Err(DropReason::SeqExhausted));

    // Exhausted on disk: no reservation is written, nothing is sent.
    let writes = st.writes.len();
    let mut r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(r.start().ceiling, lim);
    assert_eq!(st.writes.len(), writes);
    let sa = resumed(&r, false);
    assert_eq!(sa.next_seq(), Err(DropReason::SeqExhausted));
    assert_eq!(r.tick(sa.as_ref(), &mut st, Instant::now()).unwrap(), None);

    // ESN: past 2^32. The same key without ESN after that: exhausted, never wrapped.
    let mut st = FakeStore::default();
    let mut esn = record((1 << 32) + 100, false);
    esn.esn = true;
    st.store(&esn).unwrap();
    let r = Reservation::open(&mut st, side(Direction::Out, true, 64));
    assert_eq!(r.start().ceiling, (1 << 32) + 164);
    assert_eq!(resumed(&r, true).next_seq(), Ok((1 << 32) + 101));
    let r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    assert_eq!(resumed(&r, false).next_seq(), Err(DropReason::SeqExhausted));

    // Inbound without ESN: a mark at the limit takes everything as seen.
    let w = ReplayWindow::resume(64, false, lim);
    assert!(w.check(1).is_err() && w.check(u32::MAX).is_err());
}

/// The keeper extends the reservation when half of the block is used, writes it before it
/// publishes it (FakeStore checks), and while writes fail the workers stop at the ceiling
/// with a counted drop; they never pass it.
#[test]
fn extension_is_written_before_it_is_used() {
    let mut st = FakeStore::default();
    let mut r = Reservation::open(&mut st, side(Direction::Out, false, 64));
    let sa = resumed(&r, false);
    st.watch = Some(sa.clone());
    let t0 = Instant::now();
    // Ticks seconds apart: rates too low to matter, the blocks are `min_block`'s.
    let tick = |r: &mut Reservation, st: &mut FakeStore, s: u64| {
        r.tick(sa.as_ref(), st, t0 + Duration::from_secs(s))
    };
    for _ in 0..31 {
        sa.next_seq().unwrap();
    }
    assert_eq!(
        tick(&mut r, &mut st, 0).unwrap(),
        None,
        "more than half left"
    );
    sa.next_seq().unwrap();
    assert_eq!(tick(&mut r, &mut st, 10).unwrap(), Some(32 + 64));
    assert_eq!(sa.ceiling(), 96);
    assert_eq!(st.writes.last().unwrap().ceiling, 96);

    // The disk fails: the ceiling stays, the workers stop at it.
    st.fail = true;
    for _ in 32..96 {
        sa.next_seq().unwrap();
    }
    assert!(tick(&mut r, &mut st, 20).is_err());
    assert_eq!(sa.ceiling(), 96);
    assert_eq!(sa.next_seq(), Err(DropReason::SeqNotReserved));
    assert_eq!(sa.seq(), 96);
    assert_eq!(r.durable(), 96);
    // Back: extended, written first, then used. The workers pressed the ceiling at two
    // ticks: the block doubled twice (a burst before the rate is known).
    st.fail = false;
    assert_eq!(tick(&mut r, &mut st, 30).unwrap(), Some(96 + 4 * 64));
    assert_eq!(sa.next_seq(), Ok(97));
    // Every ceiling ever published was on disk: the file is never below what was sent.
    assert!(st.writes.iter().all(|w| w.ceiling >= 32));
    assert!(st.files.values().all(|w| w.ceiling >= sa.seq()));
}

/// At a high rate the block grows to about a second of traffic, so that the keeper's writes
/// stay rare and ahead of the workers.
#[test]
fn block_follows_the_rate() {
    let mut st = FakeStore::default();
    let mut r = Reservation::open(&mut st, side(Direction::Out, true, 64));
    let sa = resumed(&r, true);
    assert_eq!(r.block(), 64);
    let t0 = Instant::now();
    r.tick(sa.as_ref(), &mut st, t0).unwrap();
    // 1,000,000 numbers in 250 ms: 4 M/s.
    sa.raise_ceiling(u64::MAX); // (the test plays the worker, not the ordering)
    sa.set_seq(1_000_000);
    r.tick(sa.as_ref(), &mut st, t0 + Duration::from_millis(250))
        .unwrap();
    assert_eq!(r.block(), 4_000_000);
    assert_eq!(st.writes.last().unwrap().ceiling, 5_000_000);
}

/// A stream that starts at 100,000 packets/s (TCP soon after slow start) never reaches the
/// first, small block, even with the keeper 40 ms late once (an fsync on a busy disk): the
/// rate seen at the keeper's next look sizes the block to a second of traffic.
#[test]
fn a_stream_that_starts_fast_gets_its_block_in_time() {
    let mut st = FakeStore::default();
    let mut r = Reservation::open(&mut st, side(Direction::Out, true, 4096));
    let sa = resumed(&r, true);
    let t0 = Instant::now();
    let mut t = Duration::ZERO;
    for i in 0..20 {
        r.tick(sa.as_ref(), &mut st, t0 + t).unwrap();
        let late = if i == 1 { 4 } else { 1 };
        t += TICK * late;
        for _ in 0..1000 * late {
            sa.next_seq().expect("a number within the reservation");
        }
    }
    assert!(r.block() >= 90_000, "block {}", r.block());
    assert!(st.writes.len() <= 3, "{} writes", st.writes.len());
}

/// Inbound: the keeper follows the window's top, and an authenticated packet dropped above
/// the ceiling pulls the mark up to it; after a restart the window takes everything up to
/// the mark as seen.
#[test]
fn inbound_mark_follows_the_window_and_what_was_dropped() {
    use crate::dataplane::worker::InboundState;
    let d = temp_dir("inbound");
    let _c = Cleanup(d.clone());
    let mut st = StateDir::open(&d).unwrap();
    let r = Reservation::open(&mut st, side(Direction::In, false, 64));
    assert_eq!(r.start().ceiling, 64);
    let replay = Arc::new(ReplayTable::anonymous(4).unwrap());
    replay
        .init(1, ReplayWindow::resume(128, false, r.start().last))
        .unwrap();
    let state = Arc::new(InboundState {
        sa: crate::esp::InboundSa::new(0xf0e0, &key(3), false),
        slot: 1,
        tenant: 1,
        selectors: Vec::new(),
    });
    state.sa.limit_to(r.start().ceiling);
    let g = InboundGauge {
        state: state.clone(),
        replay: replay.clone(),
    };
    let mut r = r;
    // The worker accepts 1..=40.
    for s in 1..=40u64 {
        state.sa.admit(s).unwrap();
        replay.accept(1, s).unwrap().unwrap();
    }
    let t0 = Instant::now();
    assert_eq!(r.tick(&g, &mut st, t0).unwrap(), Some(40 + 64));
    // The peer jumps ahead (its own restart): dropped, then admitted once written (with a
    // doubled block: the packet pressed the ceiling).
    assert_eq!(state.sa.admit(500), Err(DropReason::InboundNotReserved));
    assert_eq!(
        r.tick(&g, &mut st, t0 + Duration::from_secs(10)).unwrap(),
        Some(500 + 2 * 64)
    );
    assert_eq!(state.sa.admit(500), Ok(()));
    replay.accept(1, 500).unwrap().unwrap();
    // Crash, restart: 1..=628 are all replays now, 629 and on are new.
    let r2 = Reservation::open(&mut st, side(Direction::In, false, 64));
    assert_eq!(r2.start().last, 628);
    let w = ReplayWindow::resume(128, false, r2.start().last);
    for s in [1u32, 40, 500, 628] {
        assert!(w.check(s).is_err(), "{s} accepted again after the restart");
    }
    assert_eq!(w.check(629), Ok(629));
    // A clean stop records the window's top exactly.
    assert_eq!(r.finish(&g, &mut st).unwrap(), Some(500));
}
