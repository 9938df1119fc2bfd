//! Which version and which backend a request goes to.
//!
//! The split is deterministic, not random: request k of every 100 weighted requests goes
//! to the canary when `floor((k+1)·w/100) > floor(k·w/100)`, so at weight 10 exactly 10 of
//! every 100 consecutive requests reach the canary, evenly spread (a smooth weighted round
//! robin). An analysis at low traffic then sees the share it asked for, not a dice roll.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};

use crate::matching::{Compiled, Routed};
use crate::upstream::IdleConns;

/// The two versions the proxy splits traffic between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    /// The lowercase name used in headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Stable => 0,
            Self::Canary => 1,
        }
    }

    /// Both versions, stable first.
    pub const ALL: [Self; 2] = [Self::Stable, Self::Canary];
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backends behind each version. Requests are spread round-robin within a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools {
    pub stable: Vec<SocketAddr>,
    pub canary: Vec<SocketAddr>,
}

#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    /// `Host` for requests that came without one (HTTP/1.0 clients).
    pub(crate) host: HeaderValue,
    /// Its keep-alive connections; they survive a pool swap that keeps the backend.
    pub(crate) idle: IdleConns,
}

#[derive(Debug)]
pub(crate) struct Pool {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(addrs: &[SocketAddr], previous: Option<&PoolSet>) -> Self {
        let backends = addrs
            .iter()
            .filter_map(|addr| {
                if let Some(kept) = previous.and_then(|set| set.backend(*addr)) {
                    return Some(Arc::clone(kept));
                }
                // A SocketAddr always renders as a valid header value; filter_map only
                // to avoid an unwrap on that invariant.
                let host = HeaderValue::from_str(&addr.to_string()).ok()?;
                Some(Arc::new(Backend {
                    addr: *addr,
                    host,
                    idle: IdleConns::default(),
                }))
            })
            .collect();
        Self {
            backends,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub(crate) fn next_backend(&self) -> Option<&Arc<Backend>> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i)
    }
}

#[derive(Debug)]
pub(crate) struct PoolSet {
    pub(crate) spec: Pools,
    pools: [Pool; 2],
}

impl PoolSet {
    fn new(spec: Pools, previous: Option<&Self>) -> Self {
        let pools = [
            Pool::new(&spec.stable, previous),
            Pool::new(&spec.canary, previous),
        ];
        Self { spec, pools }
    }

    fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.pools.iter().flat_map(|pool| pool.backends.iter())
    }

    fn backend(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends().find(|backend| backend.addr == addr)
    }

    pub(crate) fn pool(&self, version: Version) -> &Pool {
        &self.pools[version.index()]
    }
}

/// Weight, pools and match routes, shared by every connection task and the handle.
#[derive(Debug)]
pub(crate) struct Router {
    weight: AtomicU8,
    sequence: AtomicU64,
    pools: RwLock<Arc<PoolSet>>,
    /// Whether `routes` holds any rule or affinity: the one check a request pays when
    /// there are none (no lock, no allocation).
    has_routes: AtomicBool,
    routes: RwLock<Arc<Compiled>>,
}

/// Where a request goes, why, and the affinity cookie its response carries.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) version: Version,
    pub(crate) routed: Routed,
    pub(crate) set_cookie: Option<HeaderValue>,
}

impl Router {
    pub(crate) fn new(pools: Pools, weight: u8) -> Self {
        Self {
            weight: AtomicU8::new(weight.min(100)),
            sequence: AtomicU64::new(0),
            pools: RwLock::new(Arc::new(PoolSet::new(pools, None))),
            has_routes: AtomicBool::new(false),
            routes: RwLock::new(Arc::new(Compiled::default())),
        }
    }

    /// Installs match routes and affinity (replacing any); an empty set clears them.
    pub(crate) fn set_routes(&self, routes: Compiled) {
        let active = !routes.spec.is_empty();
        let mut current = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(routes);
        self.has_routes.store(active, Ordering::SeqCst);
    }

    /// The routes in force.
    pub(crate) fn routes(&self) -> Arc<Compiled> {
        // As for `pools`: a poisoned lock still holds a whole Arc.
        Arc::clone(&self.routes.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The version of a request that did not force one. Match routes and affinity only
    /// count while there is a canary to send to; otherwise (and without routes, the
    /// common case, which costs one atomic load here) the weight decides, and the
    /// response of a weighted request is given the affinity cookie during a canary.
    pub(crate) fn decide(&self, headers: &HeaderMap, pools: &PoolSet) -> Decision {
        if self.has_routes.load(Ordering::SeqCst) && !pools.pool(Version::Canary).is_empty() {
            let routes = self.routes();
            if routes.matches(headers) {
                return Decision {
                    version: Version::Canary,
                    routed: Routed::Matched,
                    set_cookie: None,
                };
            }
            if let Some(version) = routes.sticky(headers) {
                return Decision {
                    version,
                    routed: Routed::Sticky,
                    set_cookie: None,
                };
            }
            let version = self.choose();
            return Decision {
                version,
                routed: Routed::Weighted,
                set_cookie: routes
                    .affinity
                    .as_ref()
                    .map(|a| a.set_cookie(version).clone()),
            };
        }
        Decision {
            version: self.choose(),
            routed: Routed::Weighted,
            set_cookie: None,
        }
    }

    pub(crate) fn weight(&self) -> u8 {
        self.weight.load(Ordering::SeqCst)
    }

    /// Every request decided after this returns sees the new weight: it is read per
    /// request, at dispatch. Requests already dispatched finish where they are.
    pub(crate) fn set_weight(&self, weight: u8) {
        self.weight.store(weight, Ordering::SeqCst);
    }

    pub(crate) fn pools(&self) -> Arc<PoolSet> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc, which cannot
        // leave a torn value: the old or new Arc is there, both valid.
        Arc::clone(&self.pools.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_pools(&self, pools: Pools) {
        let mut current = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        let set = Arc::new(PoolSet::new(pools, Some(&current)));
        *current = set;
    }

    /// Closes keep-alive connections idle longer than `idle_timeout`.
    pub(crate) fn reap_idle(&self, idle_timeout: Duration) {
        for backend in self.pools().backends() {
            backend.idle.reap(idle_timeout);
        }
    }

    /// The version for a request without an override header.
    pub(crate) fn choose(&self) -> Version {
        let weight = u64::from(self.weight.load(Ordering::SeqCst));
        match weight {
            0 => Version::Stable,
            100.. => Version::Canary,
            w => {
                let k = self.sequence.fetch_add(1, Ordering::Relaxed) % 100;
                if (k + 1) * w / 100 > k * w / 100 {
                    Version::Canary
                } else {
                    Version::Stable
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_exact_per_hundred() {
        for weight in [0u8, 1, 5, 10, 25, 33, 50, 99, 100] {
            let router = Router::new(Pools::default(), weight);
            let canary = (0..1000)
                .filter(|_| router.choose() == Version::Canary)
                .count();
            assert_eq!(canary, usize::from(weight) * 10, "weight {weight}");
        }
    }

    #[test]
    fn split_is_smooth() {
        let router = Router::new(Pools::default(), 10);
        let positions: Vec<usize> = (0..30)
            .filter(|_| router.choose() == Version::Canary)
            .collect();
        assert_eq!(positions, vec![9, 19, 29]);
    }

    #[test]
    fn round_robin_within_a_pool() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let set = PoolSet::new(
            Pools {
                stable: vec![a, b],
                canary: vec![],
            },
            None,
        );
        let picks: Vec<String> = (0..4)
            .map(|_| {
                let backend = set.pool(Version::Stable).next_backend().unwrap();
                backend.addr.to_string()
            })
            .collect();
        assert_eq!(
            picks,
            [
                "127.0.0.1:1001",
                "127.0.0.1:1002",
                "127.0.0.1:1001",
                "127.0.0.1:1002"
            ]
        );
        assert!(set.pool(Version::Canary).next_backend().is_none());
    }
}
