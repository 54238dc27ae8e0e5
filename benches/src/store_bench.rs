//! The embedded stores a persistence layer could sit on, measured on this machine for what
//! Switchyard does with them: one QoS 1 message queued to one offline persistent session per
//! publish (64-byte payload, 31-byte topic), committed (fsync'd) every 1, 100 or 10,000
//! messages; then 1M queued messages read back as a restart would, the space they take on
//! disk, and the bytes the kernel wrote per byte of message (write amplification).
//!
//! Stores: Switchyard's own journal format (append-only segment, framed records, CRC-32,
//! read back by the broker's own recovery), SQLite in WAL mode (`synchronous = FULL`) and
//! redb (`Durability::Immediate`). Prints a table; never asserts.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchyard_core::persist::bench::{
    encode_offline_subscriber, encode_queued, encode_session, segment_name,
};
use switchyard_core::protocol::QoS;
use switchyard_core::Message;

#[derive(Parser)]
struct Args {
    /// Messages in the recovery run (committed 10,000 at a time).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Where the stores write (a folder on the disk under test).
    #[arg(long, default_value = "target/store-bench")]
    dir: PathBuf,
    /// Instead of comparing: write a broker persistence folder here holding `--sessions`
    /// offline persistent sessions and `--messages` queued messages spread over them, for
    /// timing a broker's start on it (scripts/bench-persistence).
    #[arg(long)]
    make_folder: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
}

fn make_folder(dir: &Path, sessions: u64, messages: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(segment_name(0)))?);
    let mut buf = Vec::new();
    for sid in 1..=sessions {
        encode_offline_subscriber(
            &mut buf,
            sid,
            &format!("device-{sid}"),
            &format!("cmd/{sid}"),
        );
        file.write_all(&buf)?;
        buf.clear();
    }
    let msg = Message::new(TOPIC, PAYLOAD.to_vec(), QoS::AtLeastOnce, false);
    for mid in 1..=messages {
        encode_queued(&mut buf, 1 + mid % sessions, mid, &msg);
        file.write_all(&buf)?;
        buf.clear();
    }
    file.flush()?;
    Ok(())
}

const TOPIC: &str = "sensors/device-0042/temperature";
const PAYLOAD: [u8; 64] = [b'x'; 64];

trait Store {
    fn name(&self) -> &'static str;
    /// Appends `mids` as queued messages and makes them durable in one commit.
    fn commit(&mut self, mids: std::ops::Range<u64>, msg: &Message) -> Result<()>;
    /// Reads everything back from a fresh open; returns how many messages it found.
    fn recover(dir: &Path) -> Result<u64>
    where
        Self: Sized;
}

struct Journal {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl Journal {
    fn open(dir: &Path) -> Result<Self> {
        let mut file = std::fs::File::create(dir.join(segment_name(0)))?;
        let mut buf = Vec::new();
        encode_session(&mut buf, 1, "subscriber");
        file.write_all(&buf)?;
        Ok(Self { file, buf })
    }
}

impl Store for Journal {
    fn name(&self) -> &'static str {
        "own journal"
    }
    fn commit(&mut self, mids: std::ops::Range<u64>, msg: &Message) -> Result<()> {
        self.buf.clear();
        for mid in mids {
            encode_queued(&mut self.buf, 1, mid, msg);
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        Ok(())
    }
    fn recover(dir: &Path) -> Result<u64> {
        let r = switchyard_core::persist::recover(dir)?;
        Ok(r.queued_count() as u64)
    }
}

struct Sqlite {
    db: rusqlite::Connection,
}

impl Sqlite {
    fn open(dir: &Path) -> Result<Self> {
        let db = rusqlite::Connection::open(dir.join("store.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB, qos INTEGER);
             CREATE TABLE queue (sid INTEGER, mid INTEGER, PRIMARY KEY (sid, mid)) WITHOUT ROWID;",
        )?;
        Ok(Self { db })
    }
}

impl Store for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite WAL"
    }
    fn commit(&mut self, mids: std::ops::Range<u64>, msg: &Message) -> Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut m = tx.prepare_cached("INSERT INTO messages VALUES (?1, ?2, ?3, 1)")?;
            let mut q = tx.prepare_cached("INSERT INTO queue VALUES (1, ?1)")?;
            for mid in mids {
                m.execute(rusqlite::params![mid as i64, &*msg.topic, &msg.payload[..]])?;
                q.execute([mid as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn recover(dir: &Path) -> Result<u64> {
        let db = rusqlite::Connection::open(dir.join("store.db"))?;
        let mut stmt = db.prepare(
            "SELECT m.id, m.topic, m.payload, m.qos FROM queue q JOIN messages m ON m.id = q.mid WHERE q.sid = 1 ORDER BY q.mid",
        )?;
        let rows = stmt.query_map([], |r| {
            let topic: String = r.get(1)?;
            let payload: Vec<u8> = r.get(2)?;
            Ok(Message::new(topic, payload, QoS::AtLeastOnce, false))
        })?;
        let mut n = 0;
        for m in rows {
            std::hint::black_box(m?);
            n += 1;
        }
        Ok(n)
    }
}

const MESSAGES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("messages");
const QUEUE: redb::TableDefinition<(u64, u64), ()> = redb::TableDefinition::new("queue");

struct Redb {
    db: redb::Database,
    buf: Vec<u8>,
}

impl Redb {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(dir.join("store.redb"))?;
        Ok(Self {
            db,
            buf: Vec::new(),
        })
    }
}

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn commit(&mut self, mids: std::ops::Range<u64>, msg: &Message) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut messages = tx.open_table(MESSAGES)?;
            let mut queue = tx.open_table(QUEUE)?;
            for mid in mids {
                self.buf.clear();
                self.buf
                    .extend_from_slice(&(msg.topic.len() as u16).to_le_bytes());
                self.buf.extend_from_slice(msg.topic.as_bytes());
                self.buf.extend_from_slice(&msg.payload);
                messages.insert(mid, self.buf.as_slice())?;
                queue.insert((1, mid), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn recover(dir: &Path) -> Result<u64> {
        let db = redb::Database::create(dir.join("store.redb"))?;
        let tx = db.begin_read()?;
        let messages = tx.open_table(MESSAGES)?;
        let queue = tx.open_table(QUEUE)?;
        let mut n = 0;
        for entry in queue.range((1, 0)..(2, 0))? {
            let (key, _) = entry?;
            let body = messages.get(key.value().1)?.context("message")?;
            let b = body.value();
            let tl = u16::from_le_bytes([b[0], b[1]]) as usize;
            let topic = std::str::from_utf8(&b[2..2 + tl])?.to_string();
            std::hint::black_box(Message::new(
                topic,
                b[2 + tl..].to_vec(),
                QoS::AtLeastOnce,
                false,
            ));
            n += 1;
        }
        Ok(n)
    }
}

/// Bytes this process has caused to be written to storage so far (`/proc/self/io`).
fn storage_writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes `n` messages committed `batch` at a time into a fresh store; returns messages/s.
fn write_run<S: Store>(
    open: impl Fn(&Path) -> Result<S>,
    dir: &Path,
    n: u64,
    batch: u64,
) -> Result<(f64, u64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut store = open(dir)?;
    let msg = Message::new(TOPIC, PAYLOAD.to_vec(), QoS::AtLeastOnce, false);
    let writes_before = storage_writes();
    let start = Instant::now();
    let mut next = 1;
    while next <= n {
        let end = (next + batch).min(n + 1);
        store.commit(next..end, &msg)?;
        next = end;
    }
    let elapsed = start.elapsed();
    let written = storage_writes() - writes_before;
    Ok((n as f64 / elapsed.as_secs_f64(), written, dir_size(dir)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.make_folder {
        return make_folder(dir, args.sessions, args.messages);
    }
    std::fs::create_dir_all(&args.dir)?;
    let logical = (TOPIC.len() + PAYLOAD.len()) as f64;
    println!(
        "| store | msgs/s, 1 per fsync | msgs/s, 100 per fsync | msgs/s, 10k per fsync | recovery of {} queued | disk space | write amplification |",
        args.messages
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    macro_rules! row {
        ($ty:ty, $open:expr) => {{
            let dir = args.dir.join(stringify!($ty));
            let mut rates = Vec::new();
            for (batch, n) in [(1, 2_000), (100, 100_000)] {
                rates.push(write_run::<$ty>($open, &dir, n, batch)?.0);
            }
            let (rate, written, size) = write_run::<$ty>($open, &dir, args.messages, 10_000)?;
            rates.push(rate);
            // Recovery reads what the write run left, from a fresh open.
            let start = Instant::now();
            let found = <$ty as Store>::recover(&dir)?;
            let recovery = start.elapsed();
            anyhow::ensure!(found == args.messages, "{} found {found}", stringify!($ty));
            std::fs::create_dir_all(args.dir.join("probe"))?;
            let name = $open(&args.dir.join("probe")).map(|s: $ty| s.name())?;
            let _ = std::fs::remove_dir_all(args.dir.join("probe"));
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {} | {:.1} MB ({:.0} B/msg) | {:.2} |",
                rates[0],
                rates[1],
                rates[2],
                fmt_duration(recovery),
                size as f64 / 1e6,
                size as f64 / args.messages as f64,
                written as f64 / (logical * args.messages as f64),
            );
            let _ = std::fs::remove_dir_all(&dir);
        }};
    }
    row!(Journal, Journal::open);
    row!(Sqlite, Sqlite::open);
    row!(Redb, Redb::open);
    Ok(())
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
