//! The audit chain: each entry holds the hash of the one before, and its own hash is the
//! sha256 of its canonical JSON (sorted keys, no whitespace) including that link.
//!
//! `seq` is monotonic and not hashed: a gap in it names a deleted entry, while the links
//! alone fix the order, so an entry whose link points at a *later* entry names a reorder.
//! The store also keeps the head (seq, hash) beside the chain, so truncating the tail or
//! appending a forged entry is caught too. Verification is a pure function over entries,
//! so a JSONL export verifies on its own with the same code.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// First line of a JSONL export.
pub const EXPORT_FORMAT: &str = "slipway-audit-export/1";

/// One audit entry: who did what, when, to which run and plan, with what outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// RFC 3339 time.
    pub at: String,
    /// Pseudonymous actor id.
    pub actor: String,
    /// Event name.
    pub action: String,
    /// Run id ("" when none).
    pub run_id: String,
    /// Plan digest ("" when none).
    pub digest: String,
    /// Outcome.
    pub outcome: String,
    /// The whole event, as JSON text.
    pub detail: String,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// sha256 of this entry's canonical form.
    pub hash: String,
}

impl AuditEntry {
    /// Compute the hash this entry must carry.
    pub fn compute_hash(&self) -> String {
        // serde_json's map is sorted (no preserve_order), and to_string has no whitespace:
        // this is the canonical form.
        let canonical = serde_json::json!({
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "run_id": self.run_id,
            "digest": self.digest,
            "outcome": self.outcome,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainBreak {
    /// The entry's content no longer matches its hash (or its successor's link).
    #[error("audit entry {seq} was edited: its content no longer matches the hash chain")]
    Edited {
        /// The entry.
        seq: i64,
    },
    /// An entry is missing.
    #[error("audit entry {seq} was deleted: the chain skips from {after} to the next entry")]
    Deleted {
        /// The missing entry.
        seq: i64,
        /// The last entry before the gap (0 when none).
        after: i64,
    },
    /// An entry that the chain never contained.
    #[error("audit entry {seq} was inserted: it is not linked into the chain")]
    Inserted {
        /// The entry.
        seq: i64,
    },
    /// Entries were moved.
    #[error("audit entry {seq} was reordered: it links to an entry that comes after it")]
    Reordered {
        /// The entry.
        seq: i64,
    },
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Entries.
    pub entries: u64,
    /// Seq of the head (0 when empty).
    pub head_seq: i64,
    /// Hash of the head ([`GENESIS`] when empty).
    pub head_hash: String,
}

/// Walk the chain (sorted by seq) and name the first entry that was edited, deleted,
/// inserted or reordered. `head` is the (seq, hash) recorded beside the chain, if any.
pub fn verify(entries: &[AuditEntry], head: Option<(i64, &str)>) -> Result<Verified, ChainBreak> {
    verify_from(entries, (0, GENESIS), head)
}

/// The verification of a store's live chain: where it started (0: genesis, else the
/// archive checkpoint it continues) and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVerification {
    /// Seq the chain was verified from.
    pub from_seq: i64,
    /// The verdict.
    pub result: Result<Verified, ChainBreak>,
}

impl StoreVerification {
    /// The JSON document `slipway audit verify --output json` prints and the server's
    /// `/api/v1/audit/verify` answers; `source` names the store.
    pub fn to_json(&self, source: &str) -> serde_json::Value {
        match &self.result {
            Ok(v) => serde_json::json!({"ok": true, "source": source, "entries": v.entries,
                "from_seq": self.from_seq, "head_seq": v.head_seq, "head_hash": v.head_hash}),
            Err(b) => serde_json::json!({"ok": false, "source": source, "break": b,
                "message": b.to_string()}),
        }
    }
}

/// Verify the live chain of `store` as `slipway audit verify` does: from the last archive
/// checkpoint (or genesis), against the head recorded beside the chain.
pub async fn verify_store(
    store: &dyn crate::store::Store,
) -> Result<StoreVerification, crate::store::StoreError> {
    // After an archive the live chain starts at its checkpoint.
    let start = store.audit_start().await?;
    let head = store.audit_head().await?;
    let entries = store.audit_entries().await?;
    let result = verify_from(
        &entries,
        (start.0, start.1.as_str()),
        head.as_ref().map(|(s, h)| (*s, h.as_str())),
    );
    Ok(StoreVerification {
        from_seq: start.0,
        result,
    })
}

/// [`verify`] for a chain whose first entries were archived: `start` is the checkpoint
/// (seq, hash) the archive ends at, so the first entry given must be `start.0 + 1` and
/// link to `start.1`. With `(0, GENESIS)` this is the whole chain.
pub fn verify_from(
    entries: &[AuditEntry],
    start: (i64, &str),
    head: Option<(i64, &str)>,
) -> Result<Verified, ChainBreak> {
    let mut prev_hash = start.1.to_owned();
    // The seq of the last entry checked; `start` may come from a tampered store, so no
    // arithmetic on it may overflow.
    let mut last = start.0;
    for (i, e) in entries.iter().enumerate() {
        if let Some((head_seq, _)) = head
            && e.seq > head_seq
        {
            return Err(ChainBreak::Inserted { seq: e.seq });
        }
        let Some(expected) = last.checked_add(1) else {
            // Nothing can follow the largest seq.
            return Err(ChainBreak::Inserted { seq: e.seq });
        };
        if e.seq > expected {
            return Err(ChainBreak::Deleted {
                seq: expected,
                after: last,
            });
        }
        if e.seq < expected {
            return Err(ChainBreak::Inserted { seq: e.seq });
        }
        let self_ok = e.compute_hash() == e.hash;
        let link_ok = e.prev_hash == prev_hash;
        if !link_ok {
            if entries[i + 1..].iter().any(|l| l.hash == e.prev_hash) {
                return Err(ChainBreak::Reordered { seq: e.seq });
            }
            if i >= 2 && entries[..i - 1].iter().any(|l| l.hash == e.prev_hash) {
                // It links past its predecessor. A duplicate of the predecessor is the
                // copy slipped in; otherwise the predecessor was slipped in before it.
                let pred = &entries[i - 1];
                let seq = if pred.hash == e.hash { e.seq } else { pred.seq };
                return Err(ChainBreak::Inserted { seq });
            }
            if self_ok && i >= 1 {
                // This entry and its predecessor are each consistent but do not link: one
                // of them was edited and its hash recomputed to hide it. A recomputed hash
                // also breaks the link to it from its own successor (or the recorded head),
                // so the one whose successor still links to it is the intact one.
                let successor_links = match entries.get(i + 1) {
                    Some(next) => next.prev_hash == e.hash,
                    None => head.is_none_or(|(_, h)| h == e.hash),
                };
                let seq = if successor_links {
                    entries[i - 1].seq
                } else {
                    e.seq
                };
                return Err(ChainBreak::Edited { seq });
            }
            return Err(ChainBreak::Edited { seq: e.seq });
        }
        if !self_ok {
            return Err(ChainBreak::Edited { seq: e.seq });
        }
        prev_hash = e.hash.clone();
        last = e.seq;
    }
    let head_seq = last;
    if let Some((seq, hash)) = head {
        if seq > head_seq {
            return Err(ChainBreak::Deleted {
                seq: head_seq + 1,
                after: head_seq,
            });
        }
        if hash != prev_hash {
            return Err(ChainBreak::Edited { seq: head_seq });
        }
    }
    Ok(Verified {
        entries: entries.len() as u64,
        head_seq,
        head_hash: prev_hash,
    })
}

/// Header line of a JSONL export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// Seq of the head.
    pub head_seq: i64,
    /// Hash of the head.
    pub head_hash: String,
    /// Number of entries that follow.
    pub entries: u64,
}

/// Why an export cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Bad JSON or header.
    #[error("read audit export line {line}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// Why.
        message: String,
    },
}

/// Write the chain as JSONL: a header with the head hash, then one entry per line.
pub fn export_jsonl(entries: &[AuditEntry]) -> String {
    let head = entries.last();
    let header = ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        head_seq: head.map_or(0, |e| e.seq),
        head_hash: head.map_or_else(|| GENESIS.to_owned(), |e| e.hash.clone()),
        entries: entries.len() as u64,
    };
    let mut out = serde_json::to_string(&header).unwrap_or_default();
    out.push('\n');
    for e in entries {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Read a JSONL export back: its header and entries.
pub fn parse_jsonl(text: &str) -> Result<(ExportHeader, Vec<AuditEntry>), ExportError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or(ExportError::Parse {
        line: 1,
        message: "the file is empty; export with `slipway audit export --out FILE`".into(),
    })?;
    let header: ExportHeader = serde_json::from_str(first).map_err(|e| ExportError::Parse {
        line: 1,
        message: format!("bad header: {e}"),
    })?;
    if header.format != EXPORT_FORMAT {
        return Err(ExportError::Parse {
            line: 1,
            message: format!(
                "format `{}` is not `{EXPORT_FORMAT}`; this build reads only that",
                header.format
            ),
        });
    }
    let mut entries = Vec::new();
    for (i, l) in lines {
        entries.push(serde_json::from_str(l).map_err(|e| ExportError::Parse {
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok((header, entries))
}

/// Verify an export on its own: the chain, that it ends at the header's head, and that the
/// header counts the entries that follow.
pub fn verify_export(text: &str) -> Result<Result<Verified, ChainBreak>, ExportError> {
    let (header, entries) = parse_jsonl(text)?;
    let verified = verify(&entries, Some((header.head_seq, &header.head_hash)));
    // A chain break says more than the count (a cut tail is a deleted entry), so the count
    // is judged only on a chain that verifies.
    if verified.is_ok() && header.entries != entries.len() as u64 {
        return Err(ExportError::Parse {
            line: 1,
            message: format!(
                "the header counts {} entries but the {} that follow verify; the header was \
                 edited: export again with `slipway audit export --out FILE`",
                header.entries,
                entries.len()
            ),
        });
    }
    Ok(verified)
}
