//! Chain verification cases found by fuzzing (`audit_fuzz`) or while writing it, kept as
//! plain tests.

use slipway_engine::audit::{AuditEntry, ChainBreak, GENESIS, verify};

fn chain(n: i64) -> Vec<AuditEntry> {
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = AuditEntry {
                seq,
                at: "2026-11-02T10:00:00Z".to_owned(),
                actor: "op-alice".to_owned(),
                action: "approved".to_owned(),
                run_id: "r1".to_owned(),
                digest: String::new(),
                outcome: "ok".to_owned(),
                detail: format!(r#"{{"n":{seq}}}"#),
                prev_hash: prev.clone(),
                hash: String::new(),
                v: 1,
            };
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            e
        })
        .collect()
}

/// Found by fuzzing: entry 2's link edited and its own hash recomputed was reported as
/// "entry 1 was edited", though entry 1 was intact. Entry 3 no longer linking to entry 2
/// (or, for the last entry, the recorded head no longer matching) says which one changed.
#[test]
fn an_entry_whose_link_was_edited_and_rehashed_is_named_not_its_predecessor() {
    for (which, n) in [(1usize, 4i64), (3, 4)] {
        let mut entries = chain(n);
        let head = entries[n as usize - 1].hash.clone();
        let e = &mut entries[which];
        e.prev_hash = String::new();
        e.hash = e.compute_hash();
        assert_eq!(
            verify(&entries, Some((n, &head))),
            Err(ChainBreak::Edited {
                seq: which as i64 + 1
            }),
            "entry {}",
            which + 1
        );
    }
    // Still: the predecessor edited and rehashed is named as before.
    let mut entries = chain(4);
    let head = entries[3].hash.clone();
    entries[1].actor = "op-mallory".to_owned();
    entries[1].hash = entries[1].compute_hash();
    assert_eq!(
        verify(&entries, Some((4, &head))),
        Err(ChainBreak::Edited { seq: 2 })
    );
}

/// Found by fuzzing the export header: its entry count was never compared with the
/// entries, so a header claiming 0 (or any number of) entries verified.
#[test]
fn an_export_header_that_miscounts_its_entries_is_refused() {
    use slipway_engine::audit::{ExportError, export_jsonl, verify_export};
    let text = export_jsonl(&chain(6));
    assert!(verify_export(&text).unwrap().is_ok());
    for wrong in ["0", "7", "60"] {
        let edited = text.replacen("\"entries\":6", &format!("\"entries\":{wrong}"), 1);
        assert_ne!(edited, text);
        match verify_export(&edited) {
            Err(ExportError::Parse { line: 1, message }) => assert!(
                message.contains(&format!("counts {wrong} entries but the 6")),
                "{message}"
            ),
            other => panic!("a header counting {wrong} entries: {other:?}"),
        }
    }
}

/// Found while reading `verify_from` for the fuzz targets: a start checkpoint (or an entry)
/// at the largest seq overflowed `seq + 1`, a panic in debug builds. A checkpoint comes from
/// the store, which a tamperer may edit: the answer must be a chain break.
#[test]
fn a_start_at_the_largest_seq_is_a_chain_break_not_a_panic() {
    use slipway_engine::audit::verify_from;
    let entries = chain(2);
    assert_eq!(
        verify_from(&entries, (i64::MAX, GENESIS), None),
        Err(ChainBreak::Inserted { seq: 1 })
    );
    let v = verify_from(&[], (i64::MAX, GENESIS), None).unwrap();
    assert_eq!((v.entries, v.head_seq), (0, i64::MAX));
    let mut last = chain(1);
    last[0].seq = i64::MAX;
    assert_eq!(
        verify_from(&last, (i64::MAX - 1, GENESIS), None).map(|v| v.head_seq),
        Ok(i64::MAX)
    );
}

/// The scheme-1 hash written without building JSON values must be exactly the one the
/// earlier builds computed (the canonical JSON of the fields), whatever the bytes hold:
/// quotes, backslashes, control characters, non-ASCII.
#[test]
fn scheme_1_hashes_what_the_canonical_json_of_earlier_builds_hashed() {
    use sha2::{Digest, Sha256};
    let texts = [
        "",
        "plain",
        "quote \" backslash \\ slash / tab \t nl \n cr \r",
        "bell \u{7} esc \u{1b} del \u{7f} nul \u{0} ff \u{c} bs \u{8}",
        "é ü ✓ 😀",
        r#"{"event":"step_succeeded","output":{"stdout":"a\"b"}}"#,
    ];
    for (i, t) in texts.iter().enumerate() {
        let e = AuditEntry {
            seq: 1,
            at: t.to_string(),
            actor: texts[(i + 1) % texts.len()].to_string(),
            action: "approved".into(),
            run_id: t.to_string(),
            digest: texts[(i + 2) % texts.len()].to_string(),
            outcome: t.to_string(),
            detail: t.to_string(),
            prev_hash: t.to_string(),
            hash: String::new(),
            v: 1,
        };
        let canonical = serde_json::json!({
            "at": e.at, "actor": e.actor, "action": e.action, "run_id": e.run_id,
            "digest": e.digest, "outcome": e.outcome, "detail": e.detail,
            "prev_hash": e.prev_hash,
        });
        let want = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        assert_eq!(e.compute_hash(), want, "text {i}");
    }
}

/// A framed buffer reads back as the entries it was written from, and each row's hash
/// check agrees with the entry's own, for both schemes.
#[test]
fn framed_rows_read_back_and_hash_like_entries() {
    use slipway_engine::audit::{Framed, frame, parse_framed};
    let mut entries = chain(5);
    for e in entries.iter_mut().skip(2) {
        e.v = 2;
        e.hash = e.compute_hash();
    }
    entries[4].detail = "edited".into();
    let mut buf = Vec::new();
    for e in &entries {
        frame(e, &mut buf);
    }
    let rows = parse_framed(&buf).unwrap();
    let back: Vec<AuditEntry> = rows.iter().map(|r| r.entry().unwrap()).collect();
    assert_eq!(back, entries);
    let ok: Vec<bool> = rows.iter().map(Framed::hash_ok).collect();
    let want: Vec<bool> = entries.iter().map(|e| e.compute_hash() == e.hash).collect();
    assert_eq!(ok, want);
    assert_eq!(ok, vec![true, true, true, true, false]);
    // A cut or padded buffer is refused, never misread.
    assert!(parse_framed(&buf[..buf.len() - 1]).is_err());
    let mut padded = buf.clone();
    padded.push(b'x');
    assert!(parse_framed(&padded).is_err());
}

/// Scheme 2 frames each field with its decimal byte length, whatever the length (the
/// short lengths take a path of their own).
#[test]
fn framed_lengths_are_decimal_at_every_size() {
    use slipway_engine::audit::canonical_v2;
    let long = vec![b'x'; 123_457];
    for n in (0..2_100).chain([9_999, 10_000, 99_999, 123_457]) {
        let mut out = Vec::new();
        canonical_v2([&long[..n], b"", b"", b"", b"", b"", b""], &mut out);
        let want = format!("{n}:");
        assert_eq!(&out[..want.len()], want.as_bytes(), "length {n}");
        assert_eq!(out.len(), want.len() + n + 6 * 2, "length {n}");
    }
}
