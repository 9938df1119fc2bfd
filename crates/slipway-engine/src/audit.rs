//! The audit chain: each entry holds the hash of the one before, and its own hash covers
//! its content and that link.
//!
//! Two hash schemes, named per entry by [`AuditEntry::v`]: entries written before journal
//! format 6 (`v` 1) hash the canonical JSON of their fields (sorted keys, no whitespace);
//! newer ones (`v` 2) hash `prev_hash` followed by their fields each framed as
//! `<byte length>:<bytes>` ([`canonical_v2`]) — the bytes the store keeps in its columns,
//! so verifying needs no JSON to be rebuilt, and the framing is unambiguous whatever the
//! bytes. A scheme flipped on an entry makes its hash mismatch, so it buys a forger
//! nothing.
//!
//! `seq` is monotonic and not hashed: a gap in it names a deleted entry, while the links
//! alone fix the order, so an entry whose link points at a *later* entry names a reorder.
//! The store also keeps the head (seq, hash) beside the chain, so truncating the tail or
//! appending a forged entry is caught too. Verification is a pure function over entries,
//! so a JSONL export verifies on its own with the same code.
//!
//! Large chains are verified in ranges of seqs: each range is checked where the store
//! reads it ([`SegmentBuilder`]: every row hashed from its column values and linked to the
//! row before it, on the reader's thread, one range per core), and [`ChainScan`] walks the
//! ranges' boundaries in order — one comparison per range. Stores that read rows in the
//! database's own framing ([`parse_framed`]) check them with [`Segment::of_framed`]. The
//! first inconsistency hands over to the exact classifier ([`verify_from`]), which names
//! what happened.

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
    /// Hash scheme: 1 (canonical JSON, before journal format 6) or 2 (framed fields).
    #[serde(default = "scheme_v1", skip_serializing_if = "is_v1")]
    pub v: u8,
}

fn scheme_v1() -> u8 {
    HASH_V1
}

fn is_v1(v: &u8) -> bool {
    *v == HASH_V1
}

/// The hash scheme of entries written before journal format 6: canonical JSON.
pub const HASH_V1: u8 = 1;
/// The hash scheme written since journal format 6: framed fields, see [`canonical_v2`].
pub const HASH_V2: u8 = 2;

impl AuditEntry {
    /// The seven hashed fields, in the order both schemes use.
    pub fn fields(&self) -> [&[u8]; 7] {
        [
            self.at.as_bytes(),
            self.actor.as_bytes(),
            self.action.as_bytes(),
            self.run_id.as_bytes(),
            self.digest.as_bytes(),
            self.outcome.as_bytes(),
            self.detail.as_bytes(),
        ]
    }

    /// Compute the hash this entry must carry under its scheme (an unknown scheme hashes
    /// as version 1, so it can never match a forged hash by accident of scheme).
    pub fn compute_hash(&self) -> String {
        let mut buf = Vec::with_capacity(512);
        hex64(hash_fields(
            self.v,
            self.prev_hash.as_bytes(),
            self.fields(),
            &mut buf,
        ))
    }
}

/// Scheme 2's hash, as hex, of an entry whose fields' canonical bytes ([`canonical_v2`])
/// were made beforehand, linking to `prev`: what [`AuditEntry::compute_hash`] gives for
/// such an entry. A writer that numbers entries in order can leave the framing to whoever
/// made the entry and only hash the link and those bytes.
pub fn hash_v2_hex(prev: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(canonical);
    hex64(h.finalize().into())
}

fn hex64(digest: [u8; 32]) -> String {
    // `hex::encode` collects its output one `char` at a time: about 2,600 instructions
    // an entry (callgrind, bench_durable), as much as the SHA-NI hash itself.
    // `from_utf8_lossy` walks its input in chunks (~500 instructions here); this hash is
    // made under the append pipeline's lock, so the plain check is worth having.
    let mut out = [0u8; 64];
    match hex::encode_to_slice(digest, &mut out).map(|()| std::str::from_utf8(&out)) {
        // 32 bytes fill exactly 64 hex digits, ASCII.
        Ok(Ok(s)) => s.to_owned(),
        _ => hex::encode(digest),
    }
}

/// The hash of an entry with fields `f` (in [`AuditEntry::fields`] order) linking to
/// `prev`, under scheme `v`; `buf` is scratch space reused between calls.
pub fn hash_fields(v: u8, prev: &[u8], f: [&[u8]; 7], buf: &mut Vec<u8>) -> [u8; 32] {
    buf.clear();
    if v == HASH_V2 {
        buf.extend_from_slice(prev);
        canonical_v2(f, buf);
    } else {
        canonical_v1(prev, f, buf);
    }
    Sha256::digest(&buf[..]).into()
}

/// Scheme 2's canonical bytes of the fields: each as `<decimal byte length>:<bytes>`, in
/// [`AuditEntry::fields`] order (the hash input is `prev_hash` followed by these).
pub fn canonical_v2(f: [&[u8]; 7], out: &mut Vec<u8>) {
    for field in f {
        push_len(out, field.len());
        out.extend_from_slice(field);
    }
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    // Most fields are shorter than 1,000 bytes: write those without the division loop
    // (verification frames seven lengths for every entry it hashes).
    if n < 10 {
        // One decimal digit: n < 10 fits in a u8.
        out.extend_from_slice(&[b'0' + n as u8, b':']);
        return;
    }
    if n < 100 {
        // Two decimal digits, each < 10.
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, b':']);
        return;
    }
    if n < 1000 {
        // Three decimal digits, each < 10.
        out.extend_from_slice(&[
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
            b':',
        ]);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        // A decimal digit: n % 10 < 10 always fits in a u8.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b':');
}

/// Scheme 1's canonical JSON, written directly: exactly what `serde_json` prints for the
/// object of the fields and `prev_hash` (keys sorted, no whitespace, its escapes), without
/// building a JSON value per entry.
fn canonical_v1(prev: &[u8], f: [&[u8]; 7], out: &mut Vec<u8>) {
    let [at, actor, action, run_id, digest, outcome, detail] = f;
    // Keys in byte order, as serde_json's (sorted) map writes them.
    let fields: [(&[u8], &[u8]); 8] = [
        (b"action", action),
        (b"actor", actor),
        (b"at", at),
        (b"detail", detail),
        (b"digest", digest),
        (b"outcome", outcome),
        (b"prev_hash", prev),
        (b"run_id", run_id),
    ];
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(k);
        out.extend_from_slice(b"\":\"");
        json_escape(v, out);
        out.push(b'"');
    }
    out.push(b'}');
}

/// serde_json's string escaping: `"` and `\\`, the short escapes for \b \f \n \r \t,
/// `\u00xx` (lowercase hex) for other control bytes; everything else as is.
fn json_escape(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
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
    /// A row the reports and gates read differs from what the chain committed to.
    #[error(
        "{} record `{}` was edited: its {} is {} but audit entry {} says {}",
        .0.table, .0.row, .0.field, .0.found, .0.seq, .0.expected
    )]
    RecordEdited(Box<RecordEdit>),
    /// A row no chain entry wrote.
    #[error("{table} record `{row}` was inserted: no audit entry wrote it")]
    RecordInserted {
        /// The table or record kind.
        table: String,
        /// Which row.
        row: String,
    },
    /// A row the chain wrote is gone.
    #[error("{table} record `{row}` was deleted: audit entry {seq} wrote it")]
    RecordDeleted {
        /// The table or record kind.
        table: String,
        /// Which row.
        row: String,
        /// The entry that wrote it last.
        seq: i64,
    },
    /// The chain ends before a signed checkpoint's head.
    #[error(
        "the audit chain was truncated: a signed checkpoint covers entry {signed_seq}, but the chain ends at entry {head_seq}"
    )]
    Truncated {
        /// The signed head.
        signed_seq: i64,
        /// Where the chain ends now.
        head_seq: i64,
    },
    /// The live chain starts at an archive checkpoint the newest signed checkpoint does
    /// not name.
    #[error(
        "the live audit chain starts after entry {start_seq}, but the newest signed checkpoint (of entry {signed_seq}) has it start after entry {signed_start}: the archive checkpoint was forged, or a signed checkpoint removed"
    )]
    StartUnanchored {
        /// Where the live chain starts now.
        start_seq: i64,
        /// The newest signed head.
        signed_seq: i64,
        /// The start that checkpoint signed.
        signed_start: i64,
    },
    /// The chain differs from a signed checkpoint: it was re-hashed after an edit.
    #[error(
        "the audit chain was rewritten: entry {seq} has hash {found}, but a signed checkpoint says {signed}"
    )]
    Rewritten {
        /// The signed entry.
        seq: i64,
        /// The hash signed.
        signed: String,
        /// The hash in the chain now.
        found: String,
    },
}

/// What differs in an edited row ([`ChainBreak::RecordEdited`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEdit {
    /// The table (`runs`) or governance record kind (`access_grant`, `rehearsal`, …).
    pub table: String,
    /// Which row (run id, record key).
    pub row: String,
    /// The field that differs (`data` for a governance record).
    pub field: String,
    /// What the row holds.
    pub found: String,
    /// What the chain says.
    pub expected: String,
    /// The chain entry that says it.
    pub seq: i64,
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

/// The verification of a store: where its live chain started (0: genesis, else the
/// archive checkpoint it continues) and what it found — the chain, the rows it vouches for
/// (`crate::evidence`) and any signed checkpoints held against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVerification {
    /// Seq the chain was verified from.
    pub from_seq: i64,
    /// The verdict.
    pub result: Result<Verified, ChainBreak>,
    /// Signed checkpoints checked against the live chain.
    pub anchors_checked: usize,
    /// Signed checkpoints whose entry is archived (checkable only with the bundle).
    pub anchors_archived: Vec<i64>,
}

impl StoreVerification {
    /// A verdict on a chain alone (an export, bundles), no checkpoint involved.
    pub fn of_chain(from_seq: i64, result: Result<Verified, ChainBreak>) -> Self {
        Self {
            from_seq,
            result,
            anchors_checked: 0,
            anchors_archived: Vec::new(),
        }
    }

    /// The JSON document `slipway audit verify --output json` prints and the server's
    /// `/api/v1/audit/verify` answers; `source` names the store.
    pub fn to_json(&self, source: &str) -> serde_json::Value {
        match &self.result {
            Ok(v) => serde_json::json!({"ok": true, "source": source, "entries": v.entries,
                "from_seq": self.from_seq, "head_seq": v.head_seq, "head_hash": v.head_hash,
                "checkpoints_checked": self.anchors_checked,
                "checkpoints_archived": self.anchors_archived}),
            Err(b) => serde_json::json!({"ok": false, "source": source, "break": b,
                "message": b.to_string()}),
        }
    }
}

/// Verify the store as `slipway audit verify` does ([`crate::evidence::verify_store`]).
pub async fn verify_store(
    store: &dyn crate::store::Store,
) -> Result<StoreVerification, crate::store::StoreError> {
    crate::evidence::verify_store(store).await
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

/// One audit row as a store streams it, borrowed from the read buffer. The framing of a
/// row is `<seq>:<v>:` followed by the seven hashed fields, `prev_hash` and `hash`, each as
/// `<byte length>:<bytes>` — so the seven framed fields are exactly scheme 2's canonical
/// bytes, hashed where they lie. A store produces it in SQL (`concat`, `octet_length`,
/// one aggregate per many rows); [`frame`] writes the same from an [`AuditEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    /// Position in the chain.
    pub seq: i64,
    /// Hash scheme.
    pub v: u8,
    /// The hashed fields, in [`AuditEntry::fields`] order.
    pub fields: [&'a [u8]; 7],
    /// The seven framed fields as they lie in the buffer (scheme 2's canonical bytes).
    pub canonical: &'a [u8],
    /// The link.
    pub prev_hash: &'a [u8],
    /// The stored hash.
    pub hash: &'a [u8],
}

impl Framed<'_> {
    /// The row's action (the event name).
    pub fn action(&self) -> &[u8] {
        self.fields[2]
    }

    /// The row as an entry (fails on bytes that are not UTF-8, which no writer produces).
    pub fn entry(&self) -> Result<AuditEntry, String> {
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| format!("audit entry {} holds bytes that are not UTF-8", self.seq))
        };
        Ok(AuditEntry {
            seq: self.seq,
            at: text(self.fields[0])?,
            actor: text(self.fields[1])?,
            action: text(self.fields[2])?,
            run_id: text(self.fields[3])?,
            digest: text(self.fields[4])?,
            outcome: text(self.fields[5])?,
            detail: text(self.fields[6])?,
            prev_hash: text(self.prev_hash)?,
            hash: text(self.hash)?,
            v: self.v,
        })
    }

    /// Whether the stored hash is the one the row's content and link give.
    pub fn hash_ok(&self) -> bool {
        hash_matches(
            self.v,
            self.prev_hash,
            self.fields,
            Some(self.canonical),
            self.hash,
            &mut Vec::new(),
        )
    }
}

/// Whether `hash` (stored, hex) is the hash of fields `f` linking to `prev` under scheme
/// `v`. `canonical`: scheme 2's canonical bytes of `f` when they already lie in one piece;
/// `buf` is scratch space reused between calls.
fn hash_matches(
    v: u8,
    prev: &[u8],
    f: [&[u8]; 7],
    canonical: Option<&[u8]>,
    hash: &[u8],
    buf: &mut Vec<u8>,
) -> bool {
    let digest: [u8; 32] = match canonical {
        Some(c) if v == HASH_V2 => {
            let mut h = Sha256::new();
            h.update(prev);
            h.update(c);
            h.finalize().into()
        }
        _ => hash_fields(v, prev, f, buf),
    };
    let mut hex = [0u8; 64];
    hex::encode_to_slice(digest, &mut hex).is_ok() && hash == hex.as_slice()
}

/// Append `e` to `out` in the framing [`parse_framed`] reads.
pub fn frame(e: &AuditEntry, out: &mut Vec<u8>) {
    frame_row(
        e.seq,
        i64::from(e.v),
        e.fields(),
        e.prev_hash.as_bytes(),
        e.hash.as_bytes(),
        out,
    );
}

/// Append one row to `out` in the framing [`parse_framed`] reads, from the column values
/// as a store reads them (borrowed, so a store stepping over its rows copies each byte
/// once). `v` is the stored scheme column as it is: a value no scheme has still frames,
/// and [`parse_framed`] refuses it, so the exact classifier decides.
pub fn frame_row(
    seq: i64,
    v: i64,
    fields: [&[u8]; 7],
    prev_hash: &[u8],
    hash: &[u8],
    out: &mut Vec<u8>,
) {
    push_int(out, seq);
    push_int(out, v);
    canonical_v2(fields, out);
    for f in [prev_hash, hash] {
        push_len(out, f.len());
        out.extend_from_slice(f);
    }
}

/// `<decimal n>:`, signed (a stored seq or scheme may be anything after an edit).
fn push_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    // Always fits on the 64-bit targets slipway builds for; were it not to, the number
    // read back would differ and the walk would hand over to the exact classifier.
    push_len(out, usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX));
}

/// Read the rows framed in `buf` (see [`Framed`]), in the order they lie there.
pub fn parse_framed(buf: &[u8]) -> Result<Vec<Framed<'_>>, String> {
    fn number(buf: &[u8], at: &mut usize) -> Option<i64> {
        let end = *at + buf.get(*at..)?.iter().position(|b| *b == b':')?;
        let n = std::str::from_utf8(&buf[*at..end]).ok()?.parse().ok()?;
        *at = end + 1;
        Some(n)
    }
    fn field<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
        let len = usize::try_from(number(buf, at)?).ok()?;
        let f = buf.get(*at..at.checked_add(len)?)?;
        *at += len;
        Some(f)
    }
    let mut rows = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let row = (|| {
            let seq = number(buf, &mut at)?;
            let v = u8::try_from(number(buf, &mut at)?).ok()?;
            let start = at;
            let mut fields: [&[u8]; 7] = [&[]; 7];
            for f in &mut fields {
                *f = field(buf, &mut at)?;
            }
            let canonical = &buf[start..at];
            let prev_hash = field(buf, &mut at)?;
            let hash = field(buf, &mut at)?;
            Some(Framed {
                seq,
                v,
                fields,
                canonical,
                prev_hash,
                hash,
            })
        })();
        match row {
            Some(r) => rows.push(r),
            None => {
                return Err(format!(
                    "read the audit rows after entry {}: a row is not framed as expected (a column holds NULL or was changed outside slipway)",
                    rows.last().map_or(0, |r: &Framed<'_>| r.seq)
                ));
            }
        }
    }
    Ok(rows)
}

/// What one reader found in one range of the chain, checked where it was read: every row
/// hashed (from the column values as the store hands them over, no framing to re-parse)
/// and linked to the row before it in the range. What is left for the sequential walk
/// ([`ChainScan::push_segment`]) is one comparison per range boundary: the first row
/// follows the previous range's last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    /// Rows accepted.
    pub rows: u64,
    /// Whether every row read was accepted: hashed right, followed the row before it
    /// (seq + 1, link), and its columns held what a writer stores. False hands over to the
    /// exact classifier.
    pub ok: bool,
    /// Seq of the first row (when `rows > 0`).
    pub first_seq: i64,
    /// Link of the first row.
    pub first_prev: Vec<u8>,
    /// Seq of the last row.
    pub last_seq: i64,
    /// Hash of the last row.
    pub last_hash: Vec<u8>,
    /// The rows the caller reads beyond the chain itself, framed ([`parse_framed`]): those
    /// the table projections fold (`crate::evidence`) and those at the requested seqs
    /// (signed checkpoints).
    pub kept: Vec<u8>,
}

/// Builds a [`Segment`] from rows fed in the order the store reads them.
#[derive(Debug)]
pub struct SegmentBuilder<'k> {
    seg: Segment,
    keep_seqs: &'k [i64],
    /// Scratch for one row's hash input, reused (no allocation per row).
    buf: Vec<u8>,
}

impl<'k> SegmentBuilder<'k> {
    /// A segment that keeps the rows at `keep_seqs` (sorted) besides the projected ones.
    pub fn new(keep_seqs: &'k [i64]) -> Self {
        Self {
            seg: Segment {
                ok: true,
                ..Segment::default()
            },
            keep_seqs,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Check the next row from its column values (`v` as stored: a value no scheme has is
    /// refused); false once the segment is broken, so the reader can stop.
    pub fn push(
        &mut self,
        seq: i64,
        v: i64,
        fields: [&[u8]; 7],
        prev_hash: &[u8],
        hash: &[u8],
    ) -> bool {
        if !self.seg.ok {
            return false;
        }
        let follows = if self.seg.rows == 0 {
            true
        } else {
            self.seg.last_seq.checked_add(1) == Some(seq) && prev_hash == self.seg.last_hash
        };
        let accepted = follows
            && u8::try_from(v)
                .is_ok_and(|v| hash_matches(v, prev_hash, fields, None, hash, &mut self.buf));
        if !accepted {
            self.seg.ok = false;
            return false;
        }
        if self.seg.rows == 0 {
            self.seg.first_seq = seq;
            self.seg.first_prev = prev_hash.to_vec();
        }
        if crate::evidence::projected(fields[2]) || self.keep_seqs.binary_search(&seq).is_ok() {
            frame_row(seq, v, fields, prev_hash, hash, &mut self.seg.kept);
        }
        self.seg.rows += 1;
        self.seg.last_seq = seq;
        self.seg.last_hash.clear();
        self.seg.last_hash.extend_from_slice(hash);
        true
    }

    /// A row whose columns hold what no writer stores (NULL, a number where text
    /// belongs): the segment is broken.
    pub fn unreadable(&mut self) {
        self.seg.ok = false;
    }

    /// The segment.
    pub fn finish(self) -> Segment {
        self.seg
    }
}

impl Segment {
    /// The segment of rows framed in `buf` ([`parse_framed`]), for stores that read framed
    /// chunks; `keep_seqs` as in [`SegmentBuilder::new`].
    pub fn of_framed(buf: &[u8], keep_seqs: &[i64]) -> Self {
        let mut b = SegmentBuilder::new(keep_seqs);
        match parse_framed(buf) {
            Ok(rows) => {
                for r in rows {
                    if !b.push(r.seq, i64::from(r.v), r.fields, r.prev_hash, r.hash) {
                        break;
                    }
                }
            }
            Err(_) => b.unreadable(),
        }
        b.finish()
    }
}

/// The fast, sequential half of verifying a large chain, fed the [`Segment`]s of its
/// ranges in seq order: each range's rows were hashed and linked where they were read, so
/// what is left is that each range starts where the previous one ended (seq + 1, the link
/// is its hash) and nothing lies past the recorded head. It accepts exactly the chains
/// [`verify_from`] accepts (property-tested in `tests/audit_fuzz.rs`); at the first range
/// it cannot accept, the caller asks [`verify_from`] what happened.
#[derive(Debug, Clone)]
pub struct ChainScan {
    prev: Vec<u8>,
    last: i64,
    entries: u64,
    head_seq: Option<i64>,
}

impl ChainScan {
    /// Start after `start` (seq, hash); `head_seq` is the recorded head's seq, if any.
    pub fn new(start: (i64, &str), head_seq: Option<i64>) -> Self {
        Self {
            prev: start.1.as_bytes().to_vec(),
            last: start.0,
            entries: 0,
            head_seq,
        }
    }

    /// Walk the next range's [`Segment`] (its rows were checked where they were read): it
    /// follows when every row was accepted, its first row follows the last row walked, and
    /// it ends at or before the recorded head. False at the first one that does not.
    pub fn push_segment(&mut self, seg: &Segment) -> bool {
        if !seg.ok {
            return false;
        }
        if seg.rows == 0 {
            return true;
        }
        if self.last.checked_add(1) != Some(seg.first_seq)
            || seg.first_prev != self.prev
            || self.head_seq.is_some_and(|h| seg.last_seq > h)
        {
            return false;
        }
        self.prev.clone_from(&seg.last_hash);
        self.last = seg.last_seq;
        self.entries += seg.rows;
        true
    }

    /// The chain verified, when it ends at the recorded `head` (or there is none).
    pub fn finish(&self, head: Option<(i64, &str)>) -> Option<Verified> {
        if let Some((seq, hash)) = head
            && (seq != self.last || hash.as_bytes() != self.prev.as_slice())
        {
            return None;
        }
        Some(Verified {
            entries: self.entries,
            head_seq: self.last,
            head_hash: String::from_utf8(self.prev.clone()).ok()?,
        })
    }

    /// The last seq accepted.
    pub fn last(&self) -> i64 {
        self.last
    }
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
