//! A [`Store`] in front of another: every call goes through to the store behind it but
//! those the wrapper answers itself. Tests put one around a real store to hold, count or
//! record the calls they are about (a renewal held until a release, the batches of each
//! commit) without writing out the forwarding of every other method — and so without
//! leaving a method the store answers its own way (`driven`, `latest_runs`, the audit
//! reads) to the trait's slower default by forgetting it.

use crate::BoxFuture;
use crate::audit::{AuditEntry, Segment};
use crate::event::{Control, Notice};
use crate::store::{
    Anchor, ApprovalRecord, AuditBounds, GovernanceRecord, JournalRecord, LeaseOutcome,
    LeaseRecord, LeaseRequest, NewRun, RunClaim, RunEvidence, RunRecord, StepRecord, Store,
    StoreError, StoredRecord,
};

type Fut<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// What a wrapper may answer itself; each method not written goes to [`Wrap::inner`].
/// Put it behind a [`Wrapped`] to use it as a [`Store`].
pub trait Wrap: Send + Sync {
    /// The store every other call goes to.
    fn inner(&self) -> &dyn Store;
    /// [`Store::commit`].
    fn commit(&self, records: Vec<JournalRecord>) -> Fut<'_, ()> {
        self.inner().commit(records)
    }
    /// [`Store::acquire_lease`].
    fn acquire_lease(&self, req: LeaseRequest) -> Fut<'_, LeaseOutcome> {
        self.inner().acquire_lease(req)
    }
    /// [`Store::release_lease`].
    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> Fut<'a, Option<LeaseRecord>> {
        self.inner().release_lease(environment, holder)
    }
}

/// A [`Wrap`] as a [`Store`] (a struct, not a blanket impl: a blanket `impl<W: Wrap>
/// Store for W` would stand in the way of every store type outside this crate).
pub struct Wrapped<W>(pub W);

impl<W: Wrap> Store for Wrapped<W> {
    fn location(&self) -> String {
        self.0.inner().location()
    }
    fn create_run<'a>(&'a self, run: NewRun, first: JournalRecord) -> Fut<'a, ()> {
        self.0.inner().create_run(run, first)
    }
    fn commit(&self, records: Vec<JournalRecord>) -> Fut<'_, ()> {
        Wrap::commit(&self.0, records)
    }
    fn run<'a>(&'a self, id: &'a str) -> Fut<'a, Option<RunRecord>> {
        self.0.inner().run(id)
    }
    fn runs(&self, limit: u32) -> Fut<'_, Vec<RunRecord>> {
        self.0.inner().runs(limit)
    }
    fn latest_runs(&self) -> Fut<'_, Vec<RunRecord>> {
        self.0.inner().latest_runs()
    }
    fn active_run<'a>(
        &'a self,
        digest: &'a str,
        environment: &'a str,
    ) -> Fut<'a, Option<RunRecord>> {
        self.0.inner().active_run(digest, environment)
    }
    fn control<'a>(&'a self, run_id: &'a str) -> Fut<'a, Option<Control>> {
        self.0.inner().control(run_id)
    }
    fn steps<'a>(&'a self, run_id: &'a str) -> Fut<'a, Vec<StepRecord>> {
        self.0.inner().steps(run_id)
    }
    fn journal<'a>(&'a self, run_id: &'a str, after_seq: i64) -> Fut<'a, Vec<Notice>> {
        self.0.inner().journal(run_id, after_seq)
    }
    fn approvals<'a>(&'a self, run_id: &'a str) -> Fut<'a, Vec<ApprovalRecord>> {
        self.0.inner().approvals(run_id)
    }
    fn pseudonym<'a>(&'a self, name: &'a str) -> Fut<'a, String> {
        self.0.inner().pseudonym(name)
    }
    fn identity<'a>(&'a self, id: &'a str) -> Fut<'a, Option<String>> {
        self.0.inner().identity(id)
    }
    fn erase_identity<'a>(&'a self, name: &'a str) -> Fut<'a, bool> {
        self.0.inner().erase_identity(name)
    }
    fn audit_entries(&self) -> Fut<'_, Vec<AuditEntry>> {
        self.0.inner().audit_entries()
    }
    fn audit_head(&self) -> Fut<'_, Option<(i64, String)>> {
        self.0.inner().audit_head()
    }
    fn audit_start(&self) -> Fut<'_, (i64, String)> {
        self.0.inner().audit_start()
    }
    fn claim<'a>(&'a self, run_id: &'a str) -> Fut<'a, Box<dyn RunClaim>> {
        self.0.inner().claim(run_id)
    }
    fn driven<'a>(&'a self, run_id: &'a str) -> Fut<'a, bool> {
        self.0.inner().driven(run_id)
    }
    fn acquire_lease(&self, req: LeaseRequest) -> Fut<'_, LeaseOutcome> {
        Wrap::acquire_lease(&self.0, req)
    }
    fn release_lease<'a>(
        &'a self,
        environment: &'a str,
        holder: Option<&'a str>,
    ) -> Fut<'a, Option<LeaseRecord>> {
        Wrap::release_lease(&self.0, environment, holder)
    }
    fn leases(&self) -> Fut<'_, Vec<LeaseRecord>> {
        self.0.inner().leases()
    }
    fn audit_bounds(&self) -> Fut<'_, AuditBounds> {
        self.0.inner().audit_bounds()
    }
    fn audit_framed(&self, after: i64, upto: i64) -> Fut<'_, Vec<u8>> {
        self.0.inner().audit_framed(after, upto)
    }
    fn audit_segment<'a>(
        &'a self,
        after: i64,
        upto: i64,
        keep_seqs: &'a [i64],
    ) -> Fut<'a, Segment> {
        self.0.inner().audit_segment(after, upto, keep_seqs)
    }
    fn run_evidence(&self) -> Fut<'_, Vec<RunEvidence>> {
        self.0.inner().run_evidence()
    }
    fn append_governance(&self, records: Vec<GovernanceRecord>) -> Fut<'_, Vec<StoredRecord>> {
        self.0.inner().append_governance(records)
    }
    fn records<'a>(&'a self, kind: Option<&'a str>) -> Fut<'a, Vec<StoredRecord>> {
        self.0.inner().records(kind)
    }
    fn record<'a>(&'a self, kind: &'a str, key: &'a str) -> Fut<'a, Option<StoredRecord>> {
        self.0.inner().record(kind, key)
    }
    fn anchors(&self) -> Fut<'_, Vec<Anchor>> {
        self.0.inner().anchors()
    }
    fn add_anchor(&self, anchor: Anchor) -> Fut<'_, bool> {
        self.0.inner().add_anchor(anchor)
    }
}
