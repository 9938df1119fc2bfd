//! The steps of a wave left to start, kept so that choosing the next one is a lookup.
//!
//! A wave starts its steps in one order — by rank (artifact re-verification, then config
//! rendering, then the rest), then plan order — with two rules: a service runs one step
//! at a time, its steps in that order, and a service's next step goes first when the
//! success of its last one is waiting to share the start's commit. The engine used to
//! find each step by scanning the whole wave and removing it from the middle of a vector,
//! which on a wave of 4,000 steps cost more CPU than journaling them (BENCHMARKS.md,
//! durable engine); here each service holds its own queue, and the services free to start
//! are ordered by their next step's place in the wave's order, so the choice is the one
//! the scan made. A step is whatever the caller names it by (the engine: its index in the
//! plan and its record), not a copy of the planned step.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// The steps of a wave not started yet, each a `T`.
#[derive(Debug)]
pub(crate) struct WaveTodo<T> {
    /// Service name → its index in `services`.
    index: HashMap<String, usize>,
    services: Vec<Service<T>>,
    /// Services with steps left and none in flight, by their next step's place in the
    /// wave's start order.
    free: BTreeSet<(usize, usize)>,
    /// Steps left per rank.
    left: [usize; 3],
}

#[derive(Debug)]
struct Service<T> {
    /// Its steps left, in start order, each with its rank and place in the wave's order.
    steps: VecDeque<(u8, usize, T)>,
    /// A step of it is in flight (or its success waits to be committed).
    busy: bool,
}

impl<T> WaveTodo<T> {
    /// The steps in start order (sorted by rank, then plan order), each with its rank
    /// (0..=2) and service.
    pub fn new<'s>(steps: impl IntoIterator<Item = (u8, &'s str, T)>) -> Self {
        let mut todo = Self {
            index: HashMap::new(),
            services: Vec::new(),
            free: BTreeSet::new(),
            left: [0; 3],
        };
        for (pos, (rank, service, step)) in steps.into_iter().enumerate() {
            let i = match todo.index.get(service) {
                Some(i) => *i,
                None => {
                    let n = todo.services.len();
                    todo.index.insert(service.to_owned(), n);
                    todo.services.push(Service {
                        steps: VecDeque::new(),
                        busy: false,
                    });
                    n
                }
            };
            let svc = &mut todo.services[i];
            if svc.steps.is_empty() {
                todo.free.insert((pos, i));
            }
            svc.steps.push_back((rank, pos, step));
            todo.left[usize::from(rank.min(2))] += 1;
        }
        todo
    }

    /// The lowest rank with steps left (of any service, busy or not).
    pub fn lowest(&self) -> Option<u8> {
        (0u8..3).find(|r| self.left[usize::from(*r)] > 0)
    }

    /// The next step of `service`, with its rank.
    pub fn next_of(&self, service: &str) -> Option<(u8, &T)> {
        let i = *self.index.get(service)?;
        self.services[i].steps.front().map(|(r, _, s)| (*r, s))
    }

    /// Take the next step of `service`, which stays busy (its previous step's success
    /// goes into this one's start).
    pub fn take_next_of(&mut self, service: &str) -> Option<T> {
        let i = *self.index.get(service)?;
        let svc = &mut self.services[i];
        let (r, pos, step) = svc.steps.pop_front()?;
        if !svc.busy {
            // Not expected (a chained step's service is busy), but keep `free` exact.
            self.free.remove(&(pos, i));
            svc.busy = true;
        }
        self.left[usize::from(r.min(2))] -= 1;
        Some(step)
    }

    /// Take the first step, in start order, of rank `rank` whose service has nothing in
    /// flight; its service becomes busy. `None` when no such step is left.
    pub fn take_free(&mut self, rank: u8) -> Option<T> {
        let &(pos, i) = self.free.first()?;
        let svc = &mut self.services[i];
        if svc.steps.front().map(|(r, _, _)| *r) != Some(rank) {
            // The free service first in order has a higher rank next, so every free
            // one has (the order is by rank first).
            return None;
        }
        self.free.remove(&(pos, i));
        svc.busy = true;
        let (r, _, step) = svc.steps.pop_front()?;
        self.left[usize::from(r.min(2))] -= 1;
        Some(step)
    }

    /// `service` has nothing in flight any more: its next step may start.
    pub fn release(&mut self, service: &str) {
        let Some(&i) = self.index.get(service) else {
            return;
        };
        let svc = &mut self.services[i];
        svc.busy = false;
        if let Some((_, pos, _)) = svc.steps.front() {
            self.free.insert((*pos, i));
        }
    }

    /// `service` failed: none of its steps left will start.
    pub fn drop_service(&mut self, service: &str) {
        let Some(&i) = self.index.get(service) else {
            return;
        };
        let svc = &mut self.services[i];
        if let Some((_, pos, _)) = svc.steps.front() {
            self.free.remove(&(*pos, i));
        }
        for (r, _, _) in svc.steps.drain(..) {
            self.left[usize::from(r.min(2))] -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step of `service`, named by its id.
    fn step(rank: u8, service: &'static str, name: &str) -> (u8, &'static str, String) {
        (rank, service, format!("{service}/{name}"))
    }

    #[test]
    fn free_services_start_in_wave_order_one_step_at_a_time() {
        let mut t = WaveTodo::new([
            step(2, "a", "1"),
            step(2, "a", "2"),
            step(2, "b", "1"),
            step(2, "c", "1"),
        ]);
        assert_eq!(t.lowest(), Some(2));
        assert_eq!(t.take_free(2).as_deref(), Some("a/1"));
        // a is busy: its second step waits; b comes next.
        assert_eq!(t.take_free(2).as_deref(), Some("b/1"));
        assert_eq!(
            t.next_of("a").map(|(r, s)| (r, s.clone())),
            Some((2, "a/2".into()))
        );
        // a's success goes into a/2's start: a stays busy.
        assert_eq!(t.take_next_of("a").as_deref(), Some("a/2"));
        assert_eq!(t.take_free(2).as_deref(), Some("c/1"));
        assert_eq!(t.take_free(2), None);
        t.release("a");
        t.release("b");
        assert_eq!(t.take_free(2), None);
        assert_eq!(t.lowest(), None);
    }

    #[test]
    fn a_lower_rank_goes_first_and_a_released_service_keeps_its_place() {
        let mut t = WaveTodo::new([
            step(0, "b", "verify"),
            step(1, "a", "config"),
            step(2, "a", "install"),
            step(2, "b", "install"),
        ]);
        assert_eq!(t.lowest(), Some(0));
        // Rank 1 is not started while rank 0 is asked for.
        assert_eq!(t.take_free(0).as_deref(), Some("b/verify"));
        assert_eq!(t.take_free(0), None);
        assert_eq!(t.lowest(), Some(1));
        assert_eq!(t.take_free(1).as_deref(), Some("a/config"));
        t.release("b");
        t.release("a");
        assert_eq!(t.lowest(), Some(2));
        // a's install comes before b's in the wave's order.
        assert_eq!(t.take_free(2).as_deref(), Some("a/install"));
        assert_eq!(t.take_free(2).as_deref(), Some("b/install"));
    }

    #[test]
    fn a_failed_service_starts_nothing_more() {
        let mut t = WaveTodo::new([step(2, "a", "1"), step(2, "a", "2"), step(2, "b", "1")]);
        assert_eq!(t.take_free(2).as_deref(), Some("a/1"));
        t.drop_service("a");
        t.release("a");
        assert!(t.next_of("a").is_none());
        assert_eq!(t.take_free(2).as_deref(), Some("b/1"));
        assert_eq!(t.lowest(), None);
    }
}
