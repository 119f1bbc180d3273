//! The loading side of the ingest API (`POST /v1/targets/{target}/messages`,
//! issue 16): the cut-over's live messages, posted by the old system's
//! "after send" callback.
//!
//! A request body goes through the loader's own scan (`Scanner`):
//! the same checks, the same plan, the same content hash and reused-id
//! detection, so a message is refused or accepted exactly as `load` would
//! (one way to do each thing). The only differences are the batch (a live
//! one, so Tencent imports with `SyncFromOldSystem` 5 and the lanes go
//! first) and the commit: a request's jobs go in one transaction before
//! the answer, so a request is stored whole or not at all, and a repost
//! (the caller's retry after a lost answer) stores nothing new.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;

use super::{input, At, Chunk, Rejected, Scanner, Sink};
use crate::config::{Config, TargetConfig};
use crate::providers;
use crate::store::Store;

/// How far ahead of this host's clock a live message's `sent_at_ms` may
/// be (the old system's clock skew) before it counts as in the future.
const CLOCK_SKEW_MS: i64 = 5_000;

/// The ingest API's configuration and database handle.
pub struct Ingest {
    store: Store,
    targets: BTreeMap<String, TargetConfig>,
    /// The bearer token callers send (`ingest.token`); never logged.
    pub token: SecretString,
    /// Bodies over this are refused before they are read whole.
    pub max_body_bytes: usize,
    max_line: usize,
}

/// The answer to a post, once committed.
#[derive(Debug, Default, Serialize)]
pub struct Answer {
    /// Messages stored now.
    pub accepted: u64,
    /// Messages already stored (a repost): nothing new was stored.
    pub known: u64,
    /// Messages refused, with the line (JSON Lines) or 1-based array
    /// position they were at and why.
    pub rejected: Vec<Rejected>,
}

/// Why a post stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no target {0:?} is configured; post to /v1/targets/NAME/messages with a configured target")]
    UnknownTarget(String),
    #[error("{0}")]
    NotMessages(String),
    #[error("batch {0:?} of this target holds history files; post live messages to a live batch (another ?batch=NAME)")]
    HistoryBatch(String),
    #[error("cannot store the messages: {0}; nothing was stored, post them again")]
    Database(#[from] sqlx::Error),
    #[error("cannot check the messages: {0}")]
    Internal(String),
}

impl Ingest {
    /// The ingest API when `[ingest] enabled`, else None.
    pub fn from_config(config: &Config, store: Store) -> Option<Arc<Ingest>> {
        if !config.ingest.enabled {
            return None;
        }
        Some(Arc::new(Ingest {
            store,
            targets: config.targets.clone(),
            token: config.ingest.token.clone()?,
            max_body_bytes: config.ingest.max_body_bytes,
            max_line: config.load.max_line_bytes.max(1024),
        }))
    }

    /// Checks and stores one request's messages in the target's live
    /// batch `batch`, then wakes the workers.
    pub async fn post(&self, target: &str, batch: &str, body: bytes::Bytes) -> Result<Answer, IngestError> {
        let cfg = self
            .targets
            .get(target)
            .ok_or_else(|| IngestError::UnknownTarget(target.to_string()))?
            .clone();
        let lines = to_lines(&body).map_err(IngestError::NotMessages)?;
        let stored = self.store.ensure_batch_as(batch, target, true, None).await?;
        if !stored.live {
            return Err(IngestError::HistoryBatch(batch.to_string()));
        }
        let base = self.store.next_load_base().await?;
        let max_line = self.max_line;
        let sink = tokio::task::spawn_blocking(move || scan_body(&cfg, &lines, max_line, base))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))?
            .map_err(|e| IngestError::Internal(format!("{e:#}")))?;
        let mut answer = Answer {
            rejected: sink.rejected,
            ..Answer::default()
        };
        let ins = self
            .store
            .insert_jobs(target, stored.id, &sink.chunk.jobs)
            .await?;
        let conflicts: HashMap<i64, &crate::store::Conflict> =
            ins.conflicts.iter().map(|c| (c.input_seq, c)).collect();
        for (seq, l) in &sink.chunk.lines {
            if let Some(c) = conflicts.get(seq) {
                answer.rejected.push(Rejected {
                    line: l.line,
                    reason: super::reused_id_reason(&l.source_id, c),
                });
            } else if ins.new_seqs.contains(seq) {
                answer.accepted += 1;
            } else {
                answer.known += 1;
            }
        }
        answer.rejected.sort_by_key(|r| r.line);
        if answer.accepted > 0 {
            // Best effort: a missed notice costs one poll interval.
            if let Err(e) = self.store.notify_live(&ins.lanes).await {
                tracing::warn!(error = %e, "cannot notify the workers of live work; they find it at their next poll");
            }
        }
        metrics::counter!(crate::ops::metrics::LIVE_RECEIVED, "target" => target.to_string())
            .increment(answer.accepted);
        Ok(answer)
    }
}

/// A body as JSON Lines: a JSON array becomes one line per element (its
/// position is its line number). A body that holds no JSON at all is
/// refused whole, since it is not what this API takes.
fn to_lines(body: &[u8]) -> Result<Vec<u8>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err("the body is empty; post JSON Lines or a JSON array of messages".into()),
        Some(b'[') => {
            let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
                format!("the body starts as a JSON array but is not one ({e}); post JSON Lines or a JSON array of messages")
            })?;
            let mut out = Vec::with_capacity(body.len());
            for it in items {
                serde_json::to_writer(&mut out, &it).map_err(|e| e.to_string())?;
                out.push(b'\n');
            }
            Ok(out)
        }
        Some(_) => {
            let any_json = body
                .split(|&b| b == b'\n')
                .any(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok());
            if !any_json {
                return Err(
                    "no line of the body is JSON; post JSON Lines (one message object a line) or a JSON array of messages"
                        .into(),
                );
            }
            Ok(body.to_vec())
        }
    }
}

/// What the scan of one body gave: jobs to store with the lines they came
/// from, and the refused lines.
#[derive(Default)]
struct IngestSink {
    base: i64,
    chunk: Chunk,
    rejected: Vec<Rejected>,
}

impl Sink for IngestSink {
    fn accept(
        &mut self,
        m: &input::InputMessage,
        jobs: Vec<providers::PlannedJob>,
        seq: i64,
        at: &At<'_>,
    ) -> anyhow::Result<()> {
        self.chunk.add(m, jobs, self.base + seq, at);
        Ok(())
    }

    fn reject(&mut self, _file: &str, line: u64, reason: &str, _raw: &[u8]) -> anyhow::Result<()> {
        self.rejected.push(Rejected {
            line,
            reason: reason.to_string(),
        });
        Ok(())
    }
}

fn scan_body(target: &TargetConfig, lines: &[u8], max_line: usize, base: i64) -> anyhow::Result<IngestSink> {
    let mut sink = IngestSink {
        base,
        ..IngestSink::default()
    };
    // The old system stamps live messages with its own clock: a few
    // seconds ahead of ours is skew, not a message from the future.
    let now = providers::unix_ms() + CLOCK_SKEW_MS;
    let mut scanner = Scanner::new(target, now, max_line, true);
    let bar = indicatif::ProgressBar::hidden();
    let name = "the ingest API";
    scanner.read(name, name.into(), Box::new(lines), &bar, &mut sink)?;
    Ok(sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_json_lines_or_one_array() {
        assert_eq!(to_lines(b"{\"a\":1}\nbad\n").unwrap(), b"{\"a\":1}\nbad\n");
        assert_eq!(
            to_lines(b" [\n {\"a\": \"x\"},\n {\"b\": 2}\n ]").unwrap(),
            b"{\"a\":\"x\"}\n{\"b\":2}\n"
        );
        assert!(to_lines(b"[{\"a\":1},").unwrap_err().contains("not one"));
        assert!(to_lines(b"  \n").unwrap_err().contains("empty"));
        assert!(to_lines(b"<xml/>\nname=value").unwrap_err().contains("no line"));
    }
}
