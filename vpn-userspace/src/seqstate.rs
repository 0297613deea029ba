//! Durable sequence-number state of manually keyed SAs.
//!
//! A manual SA keeps its key across restarts, and the AES-GCM nonce is salt || sequence
//! number (RFC 4106 3.1): after a crash, an upgrade or a restart the counter must go on above
//! every number the key ever sent, or (key, nonce) pairs repeat; and the replay window must
//! take every number the key ever accepted as seen, or captured packets are accepted again
//! (RFC 4303 3.3.3, 3.4.3). A write per packet is out of the question, so numbers are
//! reserved ahead, in blocks:
//!
//! - one state file per key and direction (`out-KEYID.seq`, `in-KEYID.seq`, KEYID a
//!   fingerprint of the keying material: a file belongs to a key, whatever the SA's name or
//!   SPI) holds a *ceiling*: no number above it was used (outbound) or accepted (inbound);
//! - the workers never go past the ceiling published to them (`OutboundSa::next_seq`,
//!   `InboundSa::admit`: one atomic load and compare per packet); a packet that would is
//!   dropped and counted (`seq_not_reserved`, `inbound_not_reserved`), never sent with a number
//!   that is not on disk;
//! - the [`Keeper`] (a thread of vpnd) raises a ceiling *after* writing it (temporary file,
//!   fsync, rename, fsync of the directory), when half of the block ahead is used; a block
//!   lasts about a second at the measured rate, and at least `min_block` numbers;
//! - at start, the counter continues after the ceiling read back, and the window takes
//!   everything up to it as seen; at a clean stop the exact values (last number sent, top of
//!   the window) are written, so a clean restart skips nothing and drops nothing;
//! - a file that cannot be trusted (unreadable, corrupt, wrong owner or mode) is never
//!   replaced by a fresh start: the SA refuses to send and to accept (`sa_state_refused`)
//!   and vpnd logs the file's path. A missing file means a key never used here: vpnd starts
//!   at 1 with a fresh file and says so (a warning), since a deleted file looks the same.
//!
//! Negotiated (IKE) SAs have fresh keys every time and do not use any of this: their ceiling
//! is the RFC limit.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    dataplane::{ReplayTable, worker::InboundState},
    esp::{OutboundSa, SaKey},
};

/// Where the state directories of the instances are, unless `[state] dir` or `--state-dir`
/// say otherwise: durable storage (not `/run`, which a reboot empties).
pub const DEFAULT_DIR: &str = "/var/lib/vpnd";
/// Smallest outbound block: what a crash may skip of the sequence space (2^32 without ESN
/// is 65,536 such crashes).
pub const DEFAULT_OUT_BLOCK: u64 = 1 << 16;
/// Smallest inbound block: at most this many of the peer's packets (or one second of its
/// traffic, whichever is more) are taken for replays after a crash. Large enough that a
/// stream starting at some 50,000 packets/s does not reach the ceiling before its rate is
/// measured (the keeper ticks every 10 ms and an fsync may take tens of ms).
pub const DEFAULT_IN_BLOCK: u64 = 1 << 12;
/// Bounds of the configurable blocks, and the largest block at any rate.
pub const MIN_BLOCK: u64 = 16;
pub const MAX_BLOCK: u64 = 1 << 26;
/// A block lasts about this long at the measured rate.
const BLOCK_TIME: Duration = Duration::from_secs(1);
/// How often the keeper looks at the counters.
pub const TICK: Duration = Duration::from_millis(10);
/// Rates are measured over at least this long: one tick, so that a stream that starts
/// (TCP's slow start reaches 100,000 packets/s within tens of ms) gets its second-long block
/// at the next tick, before it reaches the first, small one.
const RATE_WINDOW: Duration = TICK;
/// A failing write is reported again after this long.
const REPORT_AGAIN: Duration = Duration::from_secs(10);

const FORMAT: u32 = 1;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Out,
    In,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Out => "outbound",
            Direction::In => "inbound",
        })
    }
}

/// A fingerprint of an SA's keying material (key and salt): the first 8 bytes of a SHA-256
/// over a label and the material. It names the key's state file; the key itself never
/// reaches the disk or the log from here.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    pub fn of(key: &SaKey) -> KeyId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"vpnd manual SA state v1\0");
        ctx.update(&key.keymat());
        let d = ctx.finish();
        KeyId(d.as_ref()[..8].try_into().expect("8 of 32 bytes"))
    }

    fn parse(s: &str) -> Option<KeyId> {
        let v = hex16(s)?;
        Some(KeyId(v))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

fn hex16(s: &str) -> Option<[u8; 8]> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut v = [0u8; 8];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(v)
}

fn check_of(body: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// An SA name as the state file records it: one line, nothing to escape (the name is there
/// for the operator only).
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The content of one state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub direction: Direction,
    pub key_id: KeyId,
    /// The SA's name and SPI when written (for the operator; the key is what counts).
    pub sa: String,
    pub spi: u32,
    pub esn: bool,
    /// Outbound: no sequence number above it was sent with this key. Inbound: none above it
    /// was accepted.
    pub ceiling: u64,
    /// Written at a clean stop: `ceiling` is then exact (nothing was reserved beyond it).
    pub clean: bool,
}

impl Record {
    /// The file's text: a comment, one `name value` line per field, and a checksum line over
    /// everything before it (a truncated SHA-256: it catches a damaged or hand-edited file).
    pub fn encode(&self) -> String {
        let body = format!(
            "# vpnd: sequence-number state of one manually keyed SA, one key, one direction.\n\
             # Written by vpnd (fsync'd); do not edit. Deleting it while the same key stays in\n\
             # use repeats AES-GCM nonces (out) or lets captured packets in again (in).\n\
             format {FORMAT}\n\
             direction {}\n\
             key_id {}\n\
             sa {:?}\n\
             spi {:#010x}\n\
             esn {}\n\
             ceiling {}\n\
             clean {}\n",
            self.direction.name(),
            self.key_id,
            self.sa,
            self.spi,
            self.esn,
            self.ceiling,
            self.clean,
        );
        let check = check_of(&body);
        format!("{body}check {check}\n")
    }

    /// Parses a file's text; says what is wrong.
    pub fn decode(text: &str) -> Result<Record, String> {
        let at = text.rfind("\ncheck ").ok_or("no check line (truncated?)")?;
        let (body, check) = (&text[..at + 1], &text[at + 1..]);
        let check = check
            .strip_prefix("check ")
            .and_then(|c| c.strip_suffix('\n'))
            .ok_or("malformed check line")?;
        if check != check_of(body) {
            return Err("checksum mismatch (damaged or edited)".into());
        }
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for line in body.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("malformed line {line:?}"))?;
            if fields.iter().any(|(o, _)| *o == k) {
                return Err(format!("{k} given twice"));
            }
            fields.push((k, v));
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(o, _)| *o == k)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("no {k}"))
        };
        let known = [
            "format",
            "direction",
            "key_id",
            "sa",
            "spi",
            "esn",
            "ceiling",
            "clean",
        ];
        if let Some((k, _)) = fields.iter().find(|(k, _)| !known.contains(k)) {
            return Err(format!("unknown field {k}"));
        }
        if get("format")? != FORMAT.to_string() {
            return Err(format!(
                "format {} (this vpnd reads {FORMAT})",
                get("format")?
            ));
        }
        let bool_of = |k: &str| match get(k)? {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(format!("{k} {v:?} is not true or false")),
        };
        let sa = get("sa")?;
        Ok(Record {
            direction: match get("direction")? {
                "out" => Direction::Out,
                "in" => Direction::In,
                v => return Err(format!("direction {v:?}")),
            },
            key_id: KeyId::parse(get("key_id")?).ok_or("malformed key_id")?,
            sa: sa
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .ok_or("malformed sa")?
                .to_string(),
            spi: get("spi")?
                .strip_prefix("0x")
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or("malformed spi")?,
            esn: bool_of("esn")?,
            ceiling: get("ceiling")?
                .parse()
                .map_err(|_| format!("ceiling {:?} is not a number", get("ceiling")))?,
            clean: bool_of("clean")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt: {why}", .path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{}: owner uid {uid}, mode {mode:04o}: must be owned by uid {want_uid} and writable by \
         nobody else (anyone who can write it can make nonces repeat)",
        .path.display()
    )]
    Permissions {
        path: PathBuf,
        uid: u32,
        mode: u32,
        want_uid: u32,
    },
    #[error(
        "{}: another vpnd holds it (the same instance is running with this state directory)",
        .path.display()
    )]
    Locked { path: PathBuf },
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, what, source }
}

/// Owned by us and writable by nobody else.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), StateError> {
    // SAFETY: plain libc call.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(StateError::Permissions {
            path: path.to_path_buf(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
            want_uid: euid,
        });
    }
    Ok(())
}

/// Reads and writes state files (`StateDir` on disk; a fake in tests).
pub trait Store {
    /// Where the state of (direction, key) lives (for messages).
    fn path(&self, direction: Direction, key: KeyId) -> PathBuf;
    /// The record of (direction, key); None if there is none.
    fn load(&mut self, direction: Direction, key: KeyId) -> Result<Option<Record>, StateError>;
    /// Replaces the record durably: when this returns Ok, it survives a crash.
    fn store(&mut self, record: &Record) -> Result<(), StateError>;
}

/// One instance's state directory (`DIR/INSTANCE/`), locked while vpnd runs.
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed and takes its lock (`lock`, flock): two
    /// vpnds reserving from the same files would hand out the same numbers. The lock goes
    /// with the process, however it ends.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir, "creating the state directory"))?;
        let meta = std::fs::metadata(dir).map_err(io(dir, "reading the state directory"))?;
        check_owner(dir, &meta)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io(&lock_path, "opening the lock file"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StateError::Locked { path: lock_path });
            }
            return Err(io(&lock_path, "locking")(e));
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Store for StateDir {
    fn path(&self, direction: Direction, key: KeyId) -> PathBuf {
        self.dir.join(format!("{}-{key}.seq", direction.name()))
    }

    fn load(&mut self, direction: Direction, key: KeyId) -> Result<Option<Record>, StateError> {
        let path = self.path(direction, key);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "reading")(e)),
        };
        if !meta.file_type().is_file() {
            return Err(StateError::Corrupt {
                path,
                why: "not a regular file".into(),
            });
        }
        check_owner(&path, &meta)?;
        let text = std::fs::read_to_string(&path).map_err(io(&path, "reading"))?;
        let rec = Record::decode(&text).map_err(|why| StateError::Corrupt {
            path: path.clone(),
            why,
        })?;
        if rec.direction != direction || rec.key_id != key {
            return Err(StateError::Corrupt {
                path,
                why: format!(
                    "holds the state of {} key {} (copied or renamed?)",
                    rec.direction, rec.key_id
                ),
            });
        }
        Ok(Some(rec))
    }

    fn store(&mut self, record: &Record) -> Result<(), StateError> {
        let path = self.path(record.direction, record.key_id);
        let tmp = self.dir.join(format!(
            ".{}-{}.seq.tmp",
            record.direction.name(),
            record.key_id
        ));
        // A temporary file left by a crash in the middle of a write is stale: start over.
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io(&tmp, "creating"))?;
        f.write_all(record.encode().as_bytes())
            .map_err(io(&tmp, "writing"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path, "renaming the new state into place"))?;
        // The rename is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "fsync of the state directory"))?;
        Ok(())
    }
}

/// The next ceiling, if `need` (the highest number used, or wanted by a packet dropped at the
/// ceiling) has come within half a `block` of `ceiling`: `need + block`, at most `limit`.
/// Never below `ceiling`; None at the limit or while more than half a block is left.
pub fn next_ceiling(need: u64, ceiling: u64, limit: u64, block: u64) -> Option<u64> {
    if ceiling >= limit {
        return None;
    }
    if ceiling.saturating_sub(need) > block / 2 {
        return None;
    }
    let next = need.saturating_add(block).min(limit);
    (next > ceiling).then_some(next)
}

/// Where a direction of a manual SA starts, from its state file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// Outbound: the last number that may have been sent (the next is one above). Inbound:
    /// the replay mark (everything up to it is taken as received).
    pub last: u64,
    /// How far the workers may go (reserved durably).
    pub ceiling: u64,
    /// The state file could not be trusted: the SA neither sends nor accepts.
    pub refused: bool,
}

/// A direction's counter as the keeper sees it: the outbound SA, or the inbound SA with its
/// replay window.
pub trait Gauge: Send + Sync {
    /// The highest number used (outbound) or accepted (inbound); exact once the workers
    /// stopped.
    fn used(&self) -> u64;
    /// How far the workers want to go: `used`, or the number of a packet they dropped at the
    /// ceiling.
    fn wanted(&self) -> u64;
    fn ceiling(&self) -> u64;
    /// Publishes a ceiling that is on disk.
    fn raise_ceiling(&self, ceiling: u64);
}

impl Gauge for OutboundSa {
    fn used(&self) -> u64 {
        self.seq()
    }
    fn wanted(&self) -> u64 {
        self.seq()
    }
    fn ceiling(&self) -> u64 {
        OutboundSa::ceiling(self)
    }
    fn raise_ceiling(&self, ceiling: u64) {
        OutboundSa::raise_ceiling(self, ceiling)
    }
}

impl<G: Gauge + ?Sized> Gauge for Arc<G> {
    fn used(&self) -> u64 {
        G::used(self)
    }
    fn wanted(&self) -> u64 {
        G::wanted(self)
    }
    fn ceiling(&self) -> u64 {
        G::ceiling(self)
    }
    fn raise_ceiling(&self, ceiling: u64) {
        G::raise_ceiling(self, ceiling)
    }
}

/// An inbound SA and its slot of the replay table.
pub struct InboundGauge {
    pub state: Arc<InboundState>,
    pub replay: Arc<ReplayTable>,
}

impl Gauge for InboundGauge {
    fn used(&self) -> u64 {
        self.replay
            .get(self.state.slot)
            .map(|w| w.top())
            .unwrap_or(0)
    }
    fn wanted(&self) -> u64 {
        self.used().max(self.state.sa.wanted())
    }
    fn ceiling(&self) -> u64 {
        self.state.sa.ceiling()
    }
    fn raise_ceiling(&self, ceiling: u64) {
        self.state.sa.raise_ceiling(ceiling)
    }
}

/// What identifies one direction of one manual SA.
#[derive(Clone, Debug)]
pub struct Side {
    pub sa: String,
    pub direction: Direction,
    pub key: KeyId,
    pub spi: u32,
    pub esn: bool,
    /// Smallest block reserved at a time.
    pub min_block: u64,
}

impl Side {
    /// The highest sequence number the SA can ever use: 2^32-1 without ESN (RFC 4303 3.3.3),
    /// 2^64-1 with it.
    pub fn limit(&self) -> u64 {
        if self.esn { u64::MAX } else { u32::MAX as u64 }
    }

    fn record(&self, ceiling: u64, clean: bool) -> Record {
        Record {
            direction: self.direction,
            key_id: self.key,
            sa: printable(&self.sa),
            spi: self.spi,
            esn: self.esn,
            ceiling,
            clean,
        }
    }
}

/// One direction of one manual SA: what is on disk, and how fast it is used.
pub struct Reservation {
    side: Side,
    path: PathBuf,
    start: Start,
    /// The ceiling on disk (what the workers may reach).
    durable: u64,
    /// (when, used) at the start of the current rate window, and the last rate measured.
    rate_at: Option<(Instant, u64)>,
    per_s: u64,
    /// Since when writes fail, and when that was last reported.
    failing: Option<(Instant, Instant)>,
    /// The workers reached the ceiling (reported once per episode).
    pressed: bool,
    /// Multiplies `min_block` while the workers press the ceiling (outbound, the rate is then
    /// the ceiling's, not the demand's): doubled at every such tick, 1 again once they don't.
    boost: u64,
}

impl Reservation {
    /// Reads the side's state and reserves the first block durably, logging what it found.
    /// Never fails: a file that cannot be trusted gives a refused start (and an error in the
    /// log naming the file); a block that cannot be written gives a start with no room (the
    /// keeper tries again).
    pub fn open(store: &mut impl Store, side: Side) -> Reservation {
        let path = store.path(side.direction, side.key);
        let limit = side.limit();
        let what = side.direction;
        let name = &side.sa;
        let (last, refused) = match store.load(side.direction, side.key) {
            Err(e) => {
                tracing::error!(
                    "vpnd: manual SA {name:?}: {what} state cannot be trusted: {e}. The SA {} \
                     nothing (counted as sa_state_refused) until the file is repaired or the \
                     key is replaced; deleting the file is safe only together with a new key",
                    match what {
                        Direction::Out => "sends",
                        Direction::In => "accepts",
                    }
                );
                (0, true)
            }
            Ok(None) => {
                match what {
                    Direction::Out => tracing::warn!(
                        "vpnd: manual SA {name:?}: no outbound state for its key, creating {}: \
                         sequence numbers start at 1. If this key was used before (the file was \
                         deleted, or the state directory changed), AES-GCM nonces repeat: \
                         replace the key",
                        path.display()
                    ),
                    Direction::In => tracing::warn!(
                        "vpnd: manual SA {name:?}: no inbound state for its key, creating {}: \
                         fresh replay window. If this key was used before (the file was \
                         deleted, or the state directory changed), packets captured earlier \
                         are accepted again: replace the key",
                        path.display()
                    ),
                }
                (0, false)
            }
            Ok(Some(rec)) => {
                if rec.sa != printable(&side.sa) || rec.spi != side.spi {
                    tracing::info!(
                        "vpnd: manual SA {name:?}: {} was written for SA {:?} SPI {:#010x}: \
                         the same key, so its numbers carry over",
                        path.display(),
                        rec.sa,
                        rec.spi
                    );
                }
                let n = rec.ceiling;
                let (resumes, unclean) = match what {
                    Direction::Out => (
                        "outbound continues after sequence number",
                        "the numbers it had reserved but not used are skipped",
                    ),
                    Direction::In => (
                        "inbound accepts sequence numbers above",
                        "the peer's packets up to it are dropped as replays",
                    ),
                };
                if rec.clean {
                    tracing::info!(
                        "vpnd: manual SA {name:?}: {resumes} {n} (clean stop recorded in {})",
                        path.display()
                    );
                } else {
                    tracing::warn!(
                        "vpnd: manual SA {name:?}: {resumes} {n}, reserved in {} (the previous \
                         run did not stop cleanly: {unclean})",
                        path.display()
                    );
                }
                if n >= limit {
                    tracing::error!(
                        "vpnd: manual SA {name:?}: {what} sequence numbers exhausted ({n} of \
                         {limit}{}): replace the key",
                        if side.esn { "" } else { ", no ESN" }
                    );
                }
                (n.min(limit), false)
            }
        };
        let mut r = Reservation {
            path,
            start: Start {
                last,
                ceiling: last,
                refused,
            },
            durable: last,
            rate_at: None,
            per_s: 0,
            failing: None,
            pressed: false,
            boost: 1,
            side,
        };
        if !refused && let Some(c) = next_ceiling(last, last, limit, r.side.min_block) {
            match store.store(&r.side.record(c, false)) {
                Ok(()) => r.durable = c,
                Err(e) => {
                    let now = Instant::now();
                    r.failing = Some((now, now));
                    tracing::error!(
                        "vpnd: manual SA {:?}: cannot reserve {what} sequence numbers: {e}. \
                         Nothing goes {} until it can (retrying)",
                        r.side.sa,
                        match what {
                            Direction::Out => "out",
                            Direction::In => "in",
                        }
                    );
                }
            }
        }
        r.start.ceiling = r.durable;
        r
    }

    pub fn start(&self) -> Start {
        self.start
    }

    pub fn side(&self) -> &Side {
        &self.side
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ceiling on disk.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The block to reserve now: about `BLOCK_TIME` of traffic at the last measured rate,
    /// at least `min_block`, at most `MAX_BLOCK`.
    pub fn block(&self) -> u64 {
        let by_rate = (self.per_s as u128 * BLOCK_TIME.as_millis() / 1000) as u64;
        by_rate
            .max(self.side.min_block.saturating_mul(self.boost))
            .clamp(self.side.min_block, MAX_BLOCK.max(self.side.min_block))
    }

    fn measure(&mut self, used: u64, now: Instant) {
        match self.rate_at {
            None => self.rate_at = Some((now, used)),
            Some((t, u)) => {
                let dt = now.saturating_duration_since(t);
                if dt >= RATE_WINDOW {
                    let n = used.saturating_sub(u) as u128;
                    self.per_s = (n * 1_000_000 / dt.as_micros().max(1)) as u64;
                    self.rate_at = Some((now, used));
                }
            }
        }
    }

    /// One look at the gauge: if half the block ahead is used, the next ceiling is written
    /// (durably) and only then published. Returns the new ceiling, if any.
    pub fn tick(
        &mut self,
        gauge: &dyn Gauge,
        store: &mut impl Store,
        now: Instant,
    ) -> Result<Option<u64>, StateError> {
        if self.start.refused {
            return Ok(None);
        }
        let used = gauge.used();
        let wanted = gauge.wanted().max(used);
        // What the workers want, not what they got: at the ceiling `used` stands still.
        self.measure(wanted, now);
        let at_ceiling = match self.side.direction {
            Direction::Out => used >= self.durable,
            Direction::In => wanted > self.durable,
        };
        self.boost = if at_ceiling {
            self.boost.saturating_mul(2).min(MAX_BLOCK)
        } else {
            1
        };
        if at_ceiling && self.durable < self.side.limit() && !self.pressed {
            self.pressed = true;
            tracing::warn!(
                "vpnd: manual SA {:?}: {} reached its reserved ceiling {} before the state file \
                 was extended: packets dropped (counted as {})",
                self.side.sa,
                self.side.direction,
                self.durable,
                match self.side.direction {
                    Direction::Out => "seq_not_reserved",
                    Direction::In => "inbound_not_reserved",
                }
            );
        } else if !at_ceiling {
            self.pressed = false;
        }
        let Some(next) = next_ceiling(wanted, self.durable, self.side.limit(), self.block()) else {
            return Ok(None);
        };
        // Disk first: a number the workers may use must survive a crash.
        if let Err(e) = store.store(&self.side.record(next, false)) {
            let report = match self.failing {
                None => true,
                Some((_, last)) => now.saturating_duration_since(last) >= REPORT_AGAIN,
            };
            let since = self.failing.map_or(now, |(s, _)| s);
            if report {
                tracing::error!(
                    "vpnd: manual SA {:?}: cannot extend the {} reservation beyond {}: {e}",
                    self.side.sa,
                    self.side.direction,
                    self.durable
                );
                self.failing = Some((since, now));
            }
            return Err(e);
        }
        if let Some((since, _)) = self.failing.take() {
            tracing::info!(
                "vpnd: manual SA {:?}: {} state written again after {:.1} s of failures",
                self.side.sa,
                self.side.direction,
                now.saturating_duration_since(since).as_secs_f64()
            );
        }
        self.durable = next;
        gauge.raise_ceiling(next);
        Ok(Some(next))
    }

    /// After the workers stopped: records the exact value (the last number sent, the top of
    /// the window) as a clean stop, so that the next start skips and drops nothing. Returns
    /// what was written.
    pub fn finish(
        &mut self,
        gauge: &dyn Gauge,
        store: &mut impl Store,
    ) -> Result<Option<u64>, StateError> {
        if self.start.refused {
            return Ok(None);
        }
        // Never above what is on disk (nothing beyond it was used), never below the start.
        let exact = gauge.used().clamp(self.start.last, self.durable);
        store.store(&self.side.record(exact, true))?;
        self.durable = exact;
        Ok(Some(exact))
    }
}

/// Keeps the reservations of vpnd's manual SAs ahead of the workers.
pub struct Keeper {
    store: StateDir,
    sides: Vec<(Reservation, Box<dyn Gauge>)>,
}

impl Keeper {
    pub fn new(store: StateDir) -> Keeper {
        Keeper {
            store,
            sides: Vec::new(),
        }
    }

    pub fn store(&mut self) -> &mut StateDir {
        &mut self.store
    }

    /// Follows `gauge` from now on (after its SA was installed with `r.start()`).
    pub fn add(&mut self, r: Reservation, gauge: Box<dyn Gauge>) {
        self.sides.push((r, gauge));
    }

    pub fn is_empty(&self) -> bool {
        self.sides.is_empty()
    }

    /// One look at every side (errors are logged by `Reservation::tick`).
    pub fn tick(&mut self, now: Instant) {
        for (r, g) in &mut self.sides {
            let _ = r.tick(g.as_ref(), &mut self.store, now);
        }
    }

    /// Runs `tick` every `TICK` on its own thread (fsync blocks) until `stop`; hands the
    /// keeper back for `finish`.
    pub fn spawn(
        mut self,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<Keeper>> {
        std::thread::Builder::new()
            .name("vpnd-seqstate".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    self.tick(Instant::now());
                    std::thread::sleep(TICK);
                }
                self
            })
    }

    /// After the workers stopped: the exact values, as a clean stop.
    pub fn finish(&mut self) {
        for (r, g) in &mut self.sides {
            match r.finish(g.as_ref(), &mut self.store) {
                Ok(Some(n)) => tracing::info!(
                    "vpnd: manual SA {:?}: {} state saved at {n} in {}",
                    r.side.sa,
                    r.side.direction,
                    r.path.display()
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "vpnd: manual SA {:?}: could not record the clean stop: {e} (the next start \
                     skips the rest of the reservation)",
                    r.side.sa
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests;
