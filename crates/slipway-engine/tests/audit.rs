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
