//! Property tests of audit exports read back (`parse_jsonl`, `verify_export`): arbitrary
//! text, byte edits anywhere in a real export, whole lines deleted, duplicated or swapped,
//! and one field of one entry changed (with and without its hash recomputed, as a forger
//! would). Never a panic; an export verifies only when it reads as exactly the chain that
//! was exported, and any edit to an entry is a chain break naming that entry.
//! `PROPTEST_CASES` runs them longer.

use proptest::prelude::*;
use proptest::sample::Index;
use slipway_engine::audit::{
    AuditEntry, ChainBreak, ExportError, GENESIS, export_jsonl, parse_jsonl, verify_export,
};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A chain of `n` entries linked the way the store links them: the first half hashed as
/// journal formats before 5 did (scheme 1), the rest as since (scheme 2), as in a store
/// migrated halfway.
fn chain(n: i64) -> Vec<AuditEntry> {
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = AuditEntry {
                seq,
                at: format!("2026-11-0{}T10:00:00Z", 1 + seq % 9),
                actor: format!("actor-{}", seq % 3),
                action: ["run_created", "approved", "state_changed"][seq as usize % 3].to_owned(),
                run_id: format!("r{}", seq % 2),
                digest: "ab".repeat(32),
                outcome: "ok".to_owned(),
                detail: format!(r#"{{"event":"x","n":{seq},"note":"é \"quoted\""}}"#),
                prev_hash: prev.clone(),
                hash: String::new(),
                v: if seq <= n / 2 { 1 } else { 2 },
            };
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            e
        })
        .collect()
}

const N: i64 = 6;

fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..16), 1..6)
}

fn mutate(bytes: &[u8], edits: &[(Index, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (at, byte, kind) in edits {
        if out.is_empty() {
            out.push(*byte);
            continue;
        }
        let i = at.index(out.len());
        match kind {
            0..=7 => out[i] = *byte,
            8..=10 => {
                out.remove(i);
            }
            11..=13 => out.insert(i, *byte),
            _ => out.truncate(i),
        }
    }
    out
}

/// Verifies `text`: a parse error names a line and says why; a verified export reads as
/// exactly the exported chain.
fn check(text: &str) -> Result<(), TestCaseError> {
    match verify_export(text) {
        Err(ExportError::Parse { line, message }) => {
            prop_assert!(line >= 1 && !message.is_empty());
        }
        Ok(Err(_)) => {}
        Ok(Ok(v)) => {
            let (header, entries) = parse_jsonl(text).unwrap();
            let original = chain(N);
            prop_assert_eq!(&entries, &original, "an edited export verified");
            prop_assert_eq!(header.entries, N as u64);
            prop_assert_eq!(v.head_seq, N);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        check(&text)?;
        let _ = parse_jsonl(&text);
    }

    #[test]
    fn byte_edits_never_verify_as_another_chain(edits in edits()) {
        let text = export_jsonl(&chain(N));
        let mutated = mutate(text.as_bytes(), &edits);
        // The CLI reads the file as UTF-8 text first; other bytes never get here.
        if let Ok(text) = String::from_utf8(mutated) {
            check(&text)?;
        }
    }

    #[test]
    fn moved_lines_never_verify(
        op in 0u8..3,
        a in any::<Index>(),
        b in any::<Index>(),
    ) {
        let text = export_jsonl(&chain(N));
        let mut lines: Vec<&str> = text.lines().collect();
        let (i, j) = (a.index(lines.len()), b.index(lines.len()));
        match op {
            0 => { lines.remove(i); }
            1 => lines.insert(j, lines[i]),
            _ => lines.swap(i, j),
        }
        let edited = lines.join("\n");
        if edited.trim_end() != text.trim_end() {
            prop_assert!(!matches!(verify_export(&edited), Ok(Ok(_))), "{edited}");
        }
    }

    #[test]
    fn an_edited_header_never_verifies(
        field in 0usize..4,
        number in prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(i64::MIN), 0i64..12],
        text in "[a-z0-9/-]{0,70}",
    ) {
        let entries = chain(N);
        let exported = export_jsonl(&entries);
        let (header, _) = parse_jsonl(&exported).unwrap();
        let mut value = serde_json::to_value(&header).unwrap();
        match field {
            0 => value["format"] = text.into(),
            1 => value["head_seq"] = number.into(),
            2 => value["head_hash"] = text.into(),
            _ => value["entries"] = number.into(),
        }
        let edited = std::iter::once(value.to_string())
            .chain(exported.lines().skip(1).map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n");
        if value != serde_json::to_value(&header).unwrap() {
            prop_assert!(!matches!(verify_export(&edited), Ok(Ok(_))), "{}", value);
        }
    }

    #[test]
    fn an_edited_entry_is_a_chain_break_naming_it(
        which in 0..N,
        field in 0usize..10,
        value in "[a-z0-9:{}\" -]{0,16}",
        number in any::<i64>(),
        rehash in any::<bool>(),
    ) {
        let mut entries = chain(N);
        let e = &mut entries[which as usize];
        let before = e.clone();
        match field {
            0 => e.at = value,
            1 => e.actor = value,
            2 => e.action = value,
            3 => e.run_id = value,
            4 => e.digest = value,
            5 => e.outcome = value,
            6 => e.detail = value,
            7 => e.prev_hash = value,
            8 => e.hash = value,
            _ => e.seq = number,
        }
        prop_assume!(*e != before);
        // A forger recomputes the edited entry's own hash (the header keeps the old head).
        if rehash && field != 8 {
            e.hash = e.compute_hash();
        }
        let seq = before.seq;
        let mut text = export_jsonl(&entries);
        if which == N - 1 {
            // export_jsonl takes the head from the last entry; keep the exported one.
            let original = export_jsonl(&chain(N));
            let header = original.lines().next().unwrap();
            text = std::iter::once(header).chain(text.lines().skip(1)).collect::<Vec<_>>().join("\n");
        }
        let outcome = verify_export(&text).unwrap();
        if field == 9 {
            prop_assert!(outcome.is_err(), "seq {seq} changed to {number} verified");
        } else {
            prop_assert_eq!(outcome, Err(ChainBreak::Edited { seq }));
        }
    }
}

/// What the chunked verifier (`evidence::verify_store`'s fast path) makes of `entries` as a
/// store holds them (sorted by seq, one row per seq) read in ranges of `chunk` seqs: each
/// range checked on its own ([`Segment`]), the ranges walked in order ([`ChainScan`]).
/// `None` when it hands over to the exact classifier; also the seqs the segments kept.
fn chunked(
    entries: &[AuditEntry],
    head: (i64, &str),
    chunk: i64,
    keep: &[i64],
) -> (Option<slipway_engine::audit::Verified>, Vec<i64>) {
    use slipway_engine::audit::{ChainScan, Segment, frame, parse_framed};
    // `verify_store` hands a row at or below the start straight to the classifier.
    if entries.iter().any(|e| e.seq <= 0) {
        return (None, Vec::new());
    }
    let upto = entries.iter().map(|e| e.seq).max().unwrap_or(0);
    let mut scan = ChainScan::new((0, GENESIS), Some(head.0));
    let mut kept = Vec::new();
    let mut after = 0;
    while after < upto {
        let to = (after + chunk).min(upto);
        let mut buf = Vec::new();
        for e in entries.iter().filter(|e| e.seq > after && e.seq <= to) {
            frame(e, &mut buf);
        }
        let seg = Segment::of_framed(&buf, keep);
        if !scan.push_segment(&seg) {
            return (None, kept);
        }
        kept.extend(parse_framed(&seg.kept).unwrap().iter().map(|r| r.seq));
        after = to;
    }
    (scan.finish(Some(head)), kept)
}

proptest! {
    #![proptest_config(config(256))]

    /// The chunked verifier accepts exactly the chains the exact classifier accepts,
    /// whatever one entry's edit (rehashed or not), a deleted, swapped or renumbered row,
    /// and wherever the range boundaries fall; what it accepts, it reports alike, and it
    /// keeps exactly the rows the projections fold and the requested ones.
    #[test]
    fn ranges_checked_apart_accept_exactly_what_the_classifier_accepts(
        n in 1i64..14,
        op in 0u8..5,
        which in any::<Index>(),
        other in any::<Index>(),
        field in 0usize..9,
        value in "[a-z0-9:{}\" -]{0,8}",
        number in -2i64..20,
        rehash in any::<bool>(),
        chunk in 1i64..6,
        keep in proptest::collection::vec(1i64..14, 0..3),
    ) {
        let mut entries = chain(n);
        let head = entries.last().map(|e| (e.seq, e.hash.clone())).unwrap();
        let i = which.index(entries.len());
        match op {
            0 => {}
            1 => {
                let e = &mut entries[i];
                match field {
                    0 => e.at = value,
                    1 => e.actor = value,
                    2 => e.action = value,
                    3 => e.run_id = value,
                    4 => e.digest = value,
                    5 => e.outcome = value,
                    6 => e.detail = value,
                    7 => e.prev_hash = value,
                    _ => e.hash = value,
                }
                if rehash && field != 8 {
                    e.hash = e.compute_hash();
                }
            }
            2 => {
                entries.remove(i);
            }
            3 => {
                // Two rows swap places (their seqs stay where they were).
                let j = other.index(entries.len());
                let (a, b) = (entries[i].seq, entries[j].seq);
                entries[i].seq = b;
                entries[j].seq = a;
            }
            _ => {
                // A row renumbered (onto a free seq: the key is unique).
                if entries.iter().all(|e| e.seq != number) {
                    entries[i].seq = number;
                }
            }
        }
        entries.sort_by_key(|e| e.seq);
        let mut keep = keep;
        keep.sort_unstable();
        keep.dedup();
        let exact = slipway_engine::audit::verify(&entries, Some((head.0, &head.1)));
        let (fast, kept) = chunked(&entries, (head.0, &head.1), chunk, &keep);
        match (&exact, &fast) {
            (Ok(v), Some(f)) => {
                prop_assert_eq!(v, f);
                let want: Vec<i64> = entries
                    .iter()
                    .filter(|e| {
                        ["run_created", "state_changed"].contains(&e.action.as_str())
                            || keep.contains(&e.seq)
                    })
                    .map(|e| e.seq)
                    .collect();
                prop_assert_eq!(kept, want);
            }
            (Err(_), None) => {}
            _ => prop_assert!(false, "classifier {:?}, chunked {:?}", exact, fast),
        }
    }
}
