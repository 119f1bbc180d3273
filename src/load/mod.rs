//! `chatferry load`: streams JSON Lines into the job table.
//!
//! A reader thread parses and checks each line and builds its provider
//! request bodies; full chunks go through a small bounded channel to the
//! database writer, so memory stays flat whatever the input size. Loading
//! is idempotent: a job is unique per (lane, source id), and a repeat
//! insert of the same message does nothing. A different message under a
//! reused id is caught by the database (it alone sees every load and both
//! concurrent chunks) and comes back here to be rejected with its line.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::Retryable;
use serde::Serialize;

use crate::config::{Config, TargetConfig};
use crate::lane_key::LaneKey;
use crate::providers::{self, PlanContext};
use crate::store::{self, NewJob, Store};

pub mod ingest;
pub mod input;
pub mod plan;
pub mod users;

/// What a load did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadSummary {
    pub lines: u64,
    pub blank: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub jobs_planned: u64,
    pub jobs_new: u64,
    pub seconds: f64,
}

/// One rejected line, as written to the rejects file.
#[derive(Debug, Serialize)]
struct Reject<'a> {
    file: &'a str,
    line: u64,
    reason: &'a str,
    input: &'a str,
}

/// Options of one `load` call.
pub struct LoadOptions {
    pub target: String,
    pub batch: String,
    pub rejects: Option<PathBuf>,
    pub files: Vec<String>,
    /// Wall clock for window checks (Unix ms).
    pub now_ms: i64,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// `--priority`: set on the batch (higher batches are claimed first).
    pub priority: Option<i32>,
}

/// Rejected lines shown on stderr before the rest go only to the file.
const SHOWN_REJECTS: u64 = 20;
/// Longest slice of a rejected line copied into the rejects file.
const REJECT_INPUT_BYTES: usize = 4096;
/// Same-millisecond counters kept before the table is cleared.
const SAME_MS_TABLE_MAX: usize = 1 << 21;

/// Runs a load to the end.
pub async fn run(store: &Store, config: &Config, opts: LoadOptions) -> anyhow::Result<LoadSummary> {
    let target = config.target(&opts.target)?.clone();
    let batch = store
        .ensure_batch_as(&opts.batch, &opts.target, false, opts.priority)
        .await
        .context("cannot create the batch; did you run `chatferry migrate`?")?;
    if batch.live {
        anyhow::bail!(
            "batch {} of target {} is the live batch of the ingest API; load history files into another batch (--batch NAME)",
            opts.batch,
            opts.target
        );
    }
    let base = store.next_load_base().await?;
    let started = Instant::now();
    let rejects = Arc::new(Mutex::new(Rejects::open(opts.rejects.as_deref())?));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    let chunk_rows = config.load.chunk_rows.max(1);
    let max_line = config.load.max_line_bytes.max(1024);

    let target_name = opts.target.clone();
    let reader_rejects = rejects.clone();
    let reader =
        std::thread::spawn(move || read_all(opts, target, base, chunk_rows, max_line, reader_rejects, tx));

    let mut stored = Stored::default();
    // Two chunks in flight keep both the parser and the database busy.
    let mut inflight = futures::stream::FuturesOrdered::new();
    use futures::StreamExt;
    loop {
        tokio::select! {
            chunk = rx.recv(), if inflight.len() < 2 => {
                match chunk {
                    Some(c) => inflight.push_back(insert_with_retry(store.clone(), target_name.clone(), batch.id, c)),
                    None => break,
                }
            }
            Some(r) = inflight.next() => { stored.add(r?, &rejects)?; }
        }
    }
    while let Some(r) = inflight.next().await {
        stored.add(r?, &rejects)?;
    }
    let mut summary = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the input reader crashed"))??;
    if let Some(mut out) = rejects.lock().out.take() {
        out.flush()?;
    }
    summary.jobs_new = stored.new_jobs;
    summary.accepted -= stored.refused;
    summary.rejected += stored.refused;
    summary.jobs_planned -= stored.refused_jobs;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// A chunk of jobs, with the lines they came from (for rejects found by
/// the database: a reused id), keyed by `input_seq`. `load` and the
/// ingest API store accepted lines through it alike.
#[derive(Default)]
struct Chunk {
    jobs: Vec<NewJob>,
    lines: HashMap<i64, SourceLine>,
}

/// An accepted line, kept until its chunk is stored.
struct SourceLine {
    file: Arc<str>,
    line: u64,
    /// The line's start (at most [`REJECT_INPUT_BYTES`]), for the rejects file.
    raw: Box<[u8]>,
    source_id: String,
}

impl Chunk {
    fn with_capacity(rows: usize) -> Chunk {
        Chunk {
            jobs: Vec::with_capacity(rows),
            lines: HashMap::new(),
        }
    }

    /// Adds one accepted line and its planned calls as job rows: the
    /// message's content hash and origin go with every row.
    fn add(
        &mut self,
        m: &input::InputMessage,
        jobs: Vec<providers::PlannedJob>,
        input_seq: i64,
        at: &At<'_>,
    ) {
        self.lines.insert(
            input_seq,
            SourceLine {
                file: at.file.clone(),
                line: at.no,
                raw: at.raw[..at.raw.len().min(REJECT_INPUT_BYTES)].into(),
                source_id: m.id.clone(),
            },
        );
        let hash = content_hash(m);
        let origin = format!("{} line {}", at.file, at.no);
        self.jobs.extend(jobs.into_iter().map(|j| NewJob {
            lane_key: LaneKey::from_stored(j.lane_key),
            conversation: LaneKey::from_stored(j.conversation),
            view_user: j.view_user,
            source_id: m.id.clone(),
            sent_at_ms: m.sent_at_ms,
            input_seq,
            body: j.body,
            content_hash: hash.clone(),
            origin: origin.clone(),
        }));
    }
}

/// A refused line: where it was and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Its line number (for the ingest API's JSON array: its 1-based position).
    pub line: u64,
    pub reason: String,
}

/// What the database writer did, over all chunks.
#[derive(Default)]
struct Stored {
    new_jobs: u64,
    /// Lines refused for a reused id, and their planned jobs.
    refused: u64,
    refused_jobs: u64,
}

impl Stored {
    fn add(
        &mut self,
        (ins, chunk): (store::Inserted, Chunk),
        rejects: &Mutex<Rejects>,
    ) -> anyhow::Result<()> {
        self.new_jobs += ins.new;
        let mut rejects = rejects.lock();
        for c in &ins.conflicts {
            let Some(l) = chunk.lines.get(&c.input_seq) else {
                continue;
            };
            self.refused += 1;
            self.refused_jobs += chunk.jobs.iter().filter(|j| j.input_seq == c.input_seq).count() as u64;
            let reason = reused_id_reason(&l.source_id, c);
            rejects.record(&l.file, l.line, &reason, &l.raw)?;
        }
        Ok(())
    }
}

/// Why a message whose id is taken by a different message is refused.
pub(crate) fn reused_id_reason(source_id: &str, c: &store::Conflict) -> String {
    let first = c.first.as_deref().unwrap_or("an earlier load");
    format!(
        "id {source_id:?} is already loaded for this conversation from {first} with different content; \
         a source id must name one message: give this message its own id, or drop one of the two"
    )
}

/// SHA-256 of the parsed message: independent of the load (file, line,
/// batch, same-millisecond neighbours), so a reload of the same message
/// matches and a different message under the same id does not.
pub(crate) fn content_hash(m: &input::InputMessage) -> Vec<u8> {
    use sha2::Digest;
    let canonical = serde_json::to_vec(m).unwrap_or_default();
    sha2::Sha256::digest(&canonical).to_vec()
}

async fn insert_with_retry(
    store: Store,
    target: String,
    batch_id: i64,
    chunk: Chunk,
) -> anyhow::Result<(store::Inserted, Chunk)> {
    let op = || {
        let store = &store;
        let jobs = &chunk.jobs;
        let target = &target;
        async move { store.insert_jobs(target, batch_id, jobs).await }
    };
    let inserted = op
        .retry(
            crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
                .with_max_times(12)
                .iter(),
        )
        .when(store::is_transient)
        .notify(
            |e, d| tracing::warn!(error = %e, retry_in = ?d, "database unavailable while loading; retrying"),
        )
        .await
        .context("cannot write jobs to the database")?;
    Ok((inserted, chunk))
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Ok,
    TooLong(usize),
    Eof,
}

/// Reads one line into `buf` (without the newline), keeping at most `max`
/// bytes: a longer line is consumed and reported, never buffered whole.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match memchr(avail) {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        total += part.len();
        if total <= max {
            buf.extend_from_slice(part);
        }
        let used = done.unwrap_or(avail.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\r') && total <= max {
        buf.pop();
    }
    if total > max {
        buf.clear();
        return Ok(Line::TooLong(total));
    }
    Ok(Line::Ok)
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

struct Rejects {
    out: Option<BufWriter<File>>,
    shown: u64,
    to_file: bool,
}

impl Rejects {
    fn open(path: Option<&std::path::Path>) -> anyhow::Result<Rejects> {
        Ok(Rejects {
            out: match path {
                Some(p) => {
                    Some(BufWriter::new(File::create(p).with_context(|| {
                        format!("cannot create rejects file {}", p.display())
                    })?))
                }
                None => None,
            },
            shown: 0,
            to_file: path.is_some(),
        })
    }

    fn record(&mut self, file: &str, line: u64, reason: &str, raw: &[u8]) -> std::io::Result<()> {
        if self.shown < SHOWN_REJECTS {
            eprintln!("rejected: {file} line {line}: {reason}");
        } else if self.shown == SHOWN_REJECTS {
            eprintln!(
                "rejected: more lines were rejected{}",
                if self.to_file {
                    "; see the rejects file for all of them"
                } else {
                    "; pass --rejects FILE to keep them all"
                }
            );
        }
        self.shown += 1;
        if let Some(out) = self.out.as_mut() {
            let cut = &raw[..raw.len().min(REJECT_INPUT_BYTES)];
            let input = String::from_utf8_lossy(cut);
            serde_json::to_writer(
                &mut *out,
                &Reject {
                    file,
                    line,
                    reason,
                    input: &input,
                },
            )?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// What the scan hands each line to: `load` writes jobs, `plan` counts.
pub(crate) trait Sink {
    /// A line that passed every check, with the calls it plans; `seq` is
    /// its position in the input (blank and over-long lines excluded).
    fn accept(
        &mut self,
        m: &input::InputMessage,
        jobs: Vec<providers::PlannedJob>,
        seq: i64,
        at: &At<'_>,
    ) -> anyhow::Result<()>;
    /// A line that is refused, with why.
    fn reject(&mut self, file: &str, line: u64, reason: &str, raw: &[u8]) -> anyhow::Result<()>;
}

/// Where an accepted line came from.
pub(crate) struct At<'a> {
    pub file: &'a Arc<str>,
    pub no: u64,
    pub raw: &'a [u8],
}

/// The database side of `load`: chunks of jobs to the writer, rejects to
/// the rejects file.
struct LoadSink {
    rejects: Arc<Mutex<Rejects>>,
    chunk: Chunk,
    chunk_rows: usize,
    base: i64,
    tx: tokio::sync::mpsc::Sender<Chunk>,
}

impl LoadSink {
    /// Hands the chunk built so far to the database writer.
    fn send_chunk(&mut self) -> anyhow::Result<()> {
        let full = std::mem::replace(&mut self.chunk, Chunk::with_capacity(self.chunk_rows));
        if self.tx.blocking_send(full).is_err() {
            anyhow::bail!("the database writer stopped");
        }
        Ok(())
    }
}

impl Sink for LoadSink {
    fn accept(
        &mut self,
        m: &input::InputMessage,
        jobs: Vec<providers::PlannedJob>,
        seq: i64,
        at: &At<'_>,
    ) -> anyhow::Result<()> {
        self.chunk.add(m, jobs, self.base + seq, at);
        if self.chunk.jobs.len() >= self.chunk_rows {
            self.send_chunk()?;
        }
        Ok(())
    }

    fn reject(&mut self, file: &str, line: u64, reason: &str, raw: &[u8]) -> anyhow::Result<()> {
        let mut rejects = self.rejects.lock();
        Ok(rejects.record(file, line, reason, raw)?)
    }
}

fn read_all(
    opts: LoadOptions,
    target: TargetConfig,
    base: i64,
    chunk_rows: usize,
    max_line: usize,
    rejects: Arc<Mutex<Rejects>>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) -> anyhow::Result<LoadSummary> {
    let mut sink = LoadSink {
        rejects,
        chunk: Chunk::with_capacity(chunk_rows),
        chunk_rows,
        base,
        tx,
    };
    let summary = scan(
        &opts.files,
        &target,
        opts.now_ms,
        max_line,
        opts.progress,
        &mut sink,
    )?;
    if !sink.chunk.jobs.is_empty() {
        sink.send_chunk()?;
    }
    Ok(summary)
}

fn progress_bar(files: &[String], progress: bool) -> indicatif::ProgressBar {
    let total_bytes: u64 = files
        .iter()
        .filter(|f| f.as_str() != "-")
        .filter_map(|f| std::fs::metadata(f).ok().map(|m| m.len()))
        .sum();
    if !(progress && std::io::stderr().is_terminal()) {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total_bytes.max(1));
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} [{elapsed}] {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Input-order state the planners need across lines: the position of a
/// message among same-millisecond messages of its conversation.
#[derive(Default)]
struct Planner {
    same_ms: HashMap<u64, u32>,
    warned_visible_to: bool,
}

impl Planner {
    fn plan(
        &mut self,
        target: &TargetConfig,
        m: &input::InputMessage,
        now_ms: i64,
        live: bool,
        at: &At<'_>,
    ) -> Result<Vec<providers::PlannedJob>, String> {
        if matches!(target, TargetConfig::Tencent(_)) && m.visible_to.is_some() && !self.warned_visible_to {
            self.warned_visible_to = true;
            eprintln!(
                "note: visible_to cannot be expressed in Tencent IM and is ignored \
                 (first seen at {} line {})",
                at.file, at.no
            );
        }
        let conv = LaneKey::conversation(&m.from, &m.to);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        conv.hash(&mut h);
        m.sent_at_ms.hash(&mut h);
        let key = h.finish();
        if self.same_ms.len() >= SAME_MS_TABLE_MAX {
            self.same_ms.clear();
        }
        let slot = self.same_ms.entry(key).or_insert(0);
        let ctx = PlanContext {
            now_ms,
            same_ms_index: *slot,
            live,
        };
        let jobs = providers::plan(target, m, ctx).map_err(|e| e.to_string())?;
        *slot += 1;
        Ok(jobs)
    }
}

/// Reads, checks and plans every line of `files`, handing each to `sink`:
/// the one code path behind `load`, `plan` and the ingest API.
pub(crate) fn scan(
    files: &[String],
    target: &TargetConfig,
    now_ms: i64,
    max_line: usize,
    progress: bool,
    sink: &mut impl Sink,
) -> anyhow::Result<LoadSummary> {
    let mut scanner = Scanner::new(target, now_ms, max_line, false);
    let bar = progress_bar(files, progress);
    for name in files {
        let raw: Box<dyn Read> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(name).with_context(|| format!("cannot open input file {name}"))?)
        };
        let shown = if name == "-" {
            "standard input"
        } else {
            name.as_str()
        };
        scanner.read(name, shown.into(), raw, &bar, sink)?;
    }
    bar.finish_and_clear();
    Ok(scanner.summary)
}

/// The line-by-line checks across one or more inputs: the planner's state
/// and the input order carry over from one input to the next.
pub(crate) struct Scanner<'t> {
    target: &'t TargetConfig,
    now_ms: i64,
    max_line: usize,
    /// Plan for a live batch (see [`PlanContext::live`]).
    live: bool,
    planner: Planner,
    seq: i64,
    pub summary: LoadSummary,
}

impl<'t> Scanner<'t> {
    pub(crate) fn new(target: &'t TargetConfig, now_ms: i64, max_line: usize, live: bool) -> Scanner<'t> {
        Scanner {
            target,
            now_ms,
            max_line,
            live,
            planner: Planner::default(),
            seq: 0,
            summary: LoadSummary::default(),
        }
    }

    /// Scans one input: `name` for errors, `file` for reject records.
    pub(crate) fn read(
        &mut self,
        name: &str,
        file: Arc<str>,
        raw: Box<dyn Read + '_>,
        bar: &indicatif::ProgressBar,
        sink: &mut impl Sink,
    ) -> anyhow::Result<()> {
        let mut reader = BufReader::with_capacity(1 << 16, raw);
        let mut buf = Vec::with_capacity(4096);
        let mut line_no = 0u64;
        loop {
            let got = read_line_bounded(&mut reader, &mut buf, self.max_line)
                .with_context(|| format!("cannot read {name}"))?;
            line_no += 1;
            match got {
                Line::Eof => return Ok(()),
                Line::TooLong(n) => {
                    self.summary.lines += 1;
                    bar.inc(n as u64 + 1);
                    let reason = format!(
                        "line is {n} bytes, over the {}-byte limit (load.max_line_bytes); \
                         no provider accepts a message that large",
                        self.max_line
                    );
                    sink.reject(name, line_no, &reason, b"")?;
                    self.summary.rejected += 1;
                }
                Line::Ok => {
                    bar.inc(buf.len() as u64 + 1);
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        self.summary.blank += 1;
                        continue;
                    }
                    self.summary.lines += 1;
                    let at = At {
                        file: &file,
                        no: line_no,
                        raw: &buf,
                    };
                    self.check(name, &at, sink)?;
                }
            }
        }
    }

    /// Parses, checks and plans one non-blank line, and hands it to `sink`
    /// accepted or refused.
    fn check(&mut self, name: &str, at: &At<'_>, sink: &mut impl Sink) -> anyhow::Result<()> {
        self.seq += 1;
        let planned = input::parse_line(at.raw).and_then(|m| {
            self.planner
                .plan(self.target, &m, self.now_ms, self.live, at)
                .map(|jobs| (m, jobs))
        });
        match planned {
            Err(reason) => {
                sink.reject(name, at.no, &reason, at.raw)?;
                self.summary.rejected += 1;
            }
            Ok((m, jobs)) => {
                self.summary.accepted += 1;
                self.summary.jobs_planned += jobs.len() as u64;
                sink.accept(&m, jobs, self.seq, at)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reader_skips_long_lines_and_keeps_the_rest() {
        let data = format!("short\n{}\nafter\r\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        let mut next = || {
            let line = read_line_bounded(&mut r, &mut buf, 50).unwrap();
            (line, String::from_utf8(buf.clone()).unwrap())
        };
        assert_eq!(next(), (Line::Ok, "short".into()));
        assert_eq!(next(), (Line::TooLong(100), String::new()));
        assert_eq!(next(), (Line::Ok, "after".into()));
        assert_eq!(next(), (Line::Ok, "last".into()));
        assert_eq!(next().0, Line::Eof);
    }
}
