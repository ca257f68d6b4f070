//! Consistent hashing with bounded loads: which backend a key (session, tool name, caller,
//! client address) goes to, such that the same key lands on the same backend on every core
//! and across restarts, few keys move when a backend leaves or joins, and no backend takes
//! more than `c` times its share of the load (Mirrokni, Thorup, Zadimoghaddam, "Consistent
//! Hashing with Bounded Loads", 2016).
//!
//! Three schemes sit behind one type, [`HashRing`], so that they can be measured against each
//! other on the same inputs (the crate docs hold the table): weighted rendezvous hashing,
//! Maglev, and a ring with virtual nodes. Backends are identified by their index in the slice
//! given to the constructor; their `tag` (a stable identity such as a hash of the address)
//! decides where they sit, so that removing one backend does not move the others.

use xxhash_rust::xxh3::xxh3_64;

/// The `c` of bounded loads used when the configuration does not say: no backend above
/// 1.25 times its share.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// Virtual nodes per backend of average weight in [`HashScheme::Ring`] when not configured.
pub const DEFAULT_RING_VNODES: u32 = 160;

/// Maglev lookup-table size when not configured: Google's paper and Envoy use 65537, a prime
/// large enough that up to a few hundred backends get an almost equal share of entries.
pub const DEFAULT_MAGLEV_TABLE: u32 = 65_537;

/// Hashes a key's bytes to the 64-bit value every picker in this crate takes.
///
/// xxh3 because its output is fixed by a published specification (so every core, every
/// restart and every mcplb instance map a key identically, unlike `ahash`/`foldhash`, whose
/// output may change between versions and platforms, or the randomly seeded std hasher), it
/// is among the fastest for the short keys we hash (16–64 bytes: a few ns), and its
/// distribution is good enough for Maglev's modulo and the ring's binary search (FxHash's is
/// not: similar strings get similar hashes).
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Which consistent-hashing scheme a [`HashRing`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashScheme {
    /// Weighted rendezvous (highest random weight) hashing: every backend scores every key,
    /// the highest score wins. Exact weights and minimal disruption, O(N) per pick.
    Rendezvous,
    /// Google's Maglev: a lookup table of `table_size` entries (rounded up to a prime),
    /// O(1) per pick, near-minimal disruption.
    Maglev {
        /// Entries in the lookup table; should be well above 100 × the number of backends.
        table_size: u32,
    },
    /// A ring with `vnodes` points per backend of average weight, O(log(N·vnodes)) per pick.
    Ring {
        /// Points on the ring for a backend of average weight.
        vnodes: u32,
    },
}

impl HashScheme {
    /// Maglev with [`DEFAULT_MAGLEV_TABLE`] entries.
    pub const MAGLEV: HashScheme = HashScheme::Maglev {
        table_size: DEFAULT_MAGLEV_TABLE,
    };
    /// A ring with [`DEFAULT_RING_VNODES`] virtual nodes per backend.
    pub const RING: HashScheme = HashScheme::Ring {
        vnodes: DEFAULT_RING_VNODES,
    };
}

impl Default for HashScheme {
    /// The scheme the proxy uses; see the crate docs for the measurements behind the choice.
    fn default() -> Self {
        HashScheme::Rendezvous
    }
}

/// A consistent-hash picker over a fixed set of weighted backends. Immutable once built, so
/// one instance can be shared by every core (`Arc`) or built once per core with identical
/// results. Rebuild it when the set of backends changes; health and draining are not part of
/// it but are passed to each pick as `eligible`.
#[derive(Debug, Clone)]
pub struct HashRing {
    /// Weight of each backend, by index; 0 means it is never picked.
    weights: Box<[u32]>,
    /// Per-backend seed derived from its tag.
    seeds: Box<[u64]>,
    /// Whether every positive weight is equal (rendezvous can then compare raw hashes).
    uniform: bool,
    table: Table,
}

#[derive(Debug, Clone)]
enum Table {
    Rendezvous,
    Maglev {
        /// Backend index per entry; empty when no backend has a positive weight.
        entries: Box<[u32]>,
    },
    Ring {
        /// Sorted ring points.
        points: Box<[u64]>,
        /// Backend index of each point.
        owners: Box<[u32]>,
    },
}

impl HashRing {
    /// Builds the default scheme ([`HashScheme::default`]) over `(tag, weight)` backends.
    /// `tag` is the backend's stable identity (e.g. `hash_key(address)`) and should differ
    /// between backends; a backend of weight 0 is never picked.
    pub fn new(backends: &[(u32, u32)]) -> Self {
        Self::with_scheme(HashScheme::default(), backends)
    }

    /// Builds the given scheme over `(tag, weight)` backends (see [`HashRing::new`]).
    pub fn with_scheme(scheme: HashScheme, backends: &[(u32, u32)]) -> Self {
        let weights: Box<[u32]> = backends.iter().map(|&(_, w)| w).collect();
        let seeds: Box<[u64]> = backends.iter().map(|&(tag, _)| tag_seed(tag)).collect();
        let mut positive = weights.iter().copied().filter(|&w| w > 0);
        let first = positive.next();
        let uniform = positive.all(|w| Some(w) == first);
        let table = match scheme {
            HashScheme::Rendezvous => Table::Rendezvous,
            HashScheme::Maglev { table_size } => Table::Maglev {
                entries: build_maglev(&weights, &seeds, table_size),
            },
            HashScheme::Ring { vnodes } => {
                let (points, owners) = build_ring(&weights, &seeds, vnodes);
                Table::Ring { points, owners }
            }
        };
        HashRing {
            weights,
            seeds,
            uniform,
            table,
        }
    }

    /// Number of backends (including those of weight 0).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the ring was built over no backends.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The first backend for `key_hash` that `eligible` accepts, ignoring load: the plain
    /// consistent-hash pick. `None` when no backend of positive weight is eligible.
    pub fn pick(&self, key_hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.walk(key_hash, |i| self.weight(i) > 0 && eligible(i))
            .or_else(|| self.fallback(|i| self.weight(i) > 0 && eligible(i)))
    }

    /// The first backend for `key_hash` that `eligible` accepts and whose load is below its
    /// bound, walking on to the next candidate otherwise (Mirrokni et al.).
    ///
    /// `loads[i]` is backend `i`'s current load (sessions or requests; missing entries count
    /// as 0). The bound of backend `i` is `ceil(c × (T + 1) × wᵢ / W)`, where `T` is the total
    /// load and `W` the total weight of the eligible backends, so after the pick no backend
    /// exceeds `c` times its share of the mean (plus the rounding of `ceil`). `c` below 1 (or
    /// NaN) is taken as 1, since a smaller bound could leave no backend to pick;
    /// `f64::INFINITY` turns the bound off. `None` when no backend of positive weight is
    /// eligible; otherwise some backend is always under its bound.
    pub fn pick_bounded(
        &self,
        key_hash: u64,
        loads: &[u32],
        c: f64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let load = |i: usize| u64::from(loads.get(i).copied().unwrap_or(0));
        let mut total_load = 0u64;
        let mut total_weight = 0u64;
        for (i, &w) in self.weights.iter().enumerate() {
            if w > 0 && eligible(i) {
                total_load += load(i);
                total_weight += u64::from(w);
            }
        }
        if total_weight == 0 {
            return None;
        }
        let c = if c >= 1.0 { c } else { 1.0 };
        // Per unit of weight; the bound of backend i is ceil(per_weight × wᵢ).
        let per_weight = c * (total_load + 1) as f64 / total_weight as f64;
        let acceptable = |i: usize| {
            let w = self.weight(i);
            // `as u64` saturates, so an infinite bound accepts any load.
            w > 0 && load(i) < (per_weight * f64::from(w)).ceil() as u64 && eligible(i)
        };
        self.walk(key_hash, acceptable).or_else(|| {
            // Unreachable in exact arithmetic (the bounds sum to more than the total load);
            // kept so that float rounding can never turn into a refusal.
            self.fallback(|i| self.weight(i) > 0 && eligible(i))
        })
    }

    fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(0)
    }

    /// Scheme-specific order of candidates for `key`: the first one `accept` takes.
    #[inline]
    fn walk(&self, key: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        match &self.table {
            Table::Rendezvous => self.rendezvous(key, accept),
            Table::Maglev { entries } => {
                let len = entries.len();
                let start = fast_range(key, len);
                // Entries are pseudo-random, so the next distinct backend is a few steps away.
                (0..len).find_map(|step| {
                    let pos = (start + step) % len;
                    let i = entries.get(pos).copied()? as usize;
                    accept(i).then_some(i)
                })
            }
            Table::Ring { points, owners } => {
                let len = points.len();
                let start = points.partition_point(|&p| p < key);
                (0..len).find_map(|step| {
                    let pos = (start + step) % len;
                    let i = owners.get(pos).copied()? as usize;
                    accept(i).then_some(i)
                })
            }
        }
    }

    /// Highest-scoring backend among those `accept` takes. With equal weights the raw hash
    /// orders backends like the weighted score does, without a logarithm.
    #[inline]
    fn rendezvous(&self, key: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        if self.uniform {
            // Fast path: the top hash without branching on each backend, then one `accept`.
            // It is the answer whenever `accept` takes it, which is the usual case.
            let mut top = (0usize, 0u64);
            for (i, (&seed, &w)) in self.seeds.iter().zip(self.weights.iter()).enumerate() {
                let h = if w > 0 { mix64(key ^ seed) } else { 0 };
                if h > top.1 {
                    top = (i, h);
                }
            }
            if top.1 > 0 && accept(top.0) {
                return Some(top.0);
            }
            let mut best_h = 0u64;
            for (i, &seed) in self.seeds.iter().enumerate() {
                let h = mix64(key ^ seed);
                if (best.is_none() || h > best_h) && accept(i) {
                    best = Some(i);
                    best_h = h;
                }
            }
        } else {
            let mut best_score = f64::NEG_INFINITY;
            for (i, (&seed, &w)) in self.seeds.iter().zip(self.weights.iter()).enumerate() {
                if w == 0 {
                    continue;
                }
                let score = weighted_score(mix64(key ^ seed), w);
                if score > best_score && accept(i) {
                    best = Some(i);
                    best_score = score;
                }
            }
        }
        best
    }

    /// Least-loaded-by-index fallback: the first backend `accept` takes.
    fn fallback(&self, accept: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.weights.len()).find(|&i| accept(i))
    }
}

/// Weighted rendezvous score `w / -ln(u)` with `u = h` mapped into (0, 1): the backend with
/// the highest score wins a key with probability proportional to its weight (Schindelhauer
/// and Schomaker's logarithmic method).
#[inline]
fn weighted_score(h: u64, w: u32) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    f64::from(w) / -u.ln()
}

/// SplitMix64's finaliser: a bijection with full avalanche, used to derive per-backend
/// values from a key hash and a seed.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn tag_seed(tag: u32) -> u64 {
    mix64(u64::from(tag).wrapping_add(GOLDEN))
}

/// Maps a uniform 64-bit hash onto `0..len` without a division (Lemire's fast range).
#[inline]
fn fast_range(h: u64, len: usize) -> usize {
    ((u128::from(h) * len as u128) >> 64) as usize
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if (n / d) * d == n {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(mut n: u64) -> u64 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// Maglev table population (Eisenbud et al. 2016, weighted as in Envoy): backends take turns
/// filling their next preferred empty entry; a backend of weight w takes a turn in w out of
/// every max-weight rounds.
fn build_maglev(weights: &[u32], seeds: &[u64], table_size: u32) -> Box<[u32]> {
    let active: Vec<(usize, u64, u64)> = weights
        .iter()
        .zip(seeds)
        .enumerate()
        .filter(|(_, (&w, _))| w > 0)
        .map(|(i, (&w, &s))| (i, u64::from(w), s))
        .collect();
    if active.is_empty() {
        return Box::new([]);
    }
    let m = next_prime(u64::from(table_size.max(2)).max(active.len() as u64));
    let max_w = active.iter().map(|a| a.1).max().unwrap_or(1);
    struct Build {
        index: u32,
        weight: u64,
        offset: u64,
        skip: u64,
        next: u64,
        target: u64,
    }
    let mut builds: Vec<Build> = active
        .iter()
        .map(|&(i, w, s)| Build {
            index: i as u32,
            weight: w,
            offset: mix64(s ^ 0x6d61_676c_6576_0001) % m,
            skip: mix64(s ^ 0x6d61_676c_6576_0002) % (m - 1) + 1,
            next: 0,
            target: 0,
        })
        .collect();
    let mut table: Vec<u32> = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    let mut round = 0u64;
    while filled < m {
        for b in builds.iter_mut() {
            if filled >= m {
                break;
            }
            if round * b.weight < b.target {
                continue;
            }
            b.target += max_w;
            loop {
                let pos = ((b.offset + b.skip * b.next) % m) as usize;
                b.next += 1;
                if let Some(slot) = table.get_mut(pos) {
                    if *slot == u32::MAX {
                        *slot = b.index;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        round += 1;
    }
    table.into_boxed_slice()
}

/// Ring points: backend i gets `vnodes × wᵢ / mean weight` points (at least one), each at a
/// SplitMix64 step from its seed.
fn build_ring(weights: &[u32], seeds: &[u64], vnodes: u32) -> (Box<[u64]>, Box<[u32]>) {
    let positive: Vec<u64> = weights
        .iter()
        .filter(|&&w| w > 0)
        .map(|&w| u64::from(w))
        .collect();
    if positive.is_empty() {
        return (Box::new([]), Box::new([]));
    }
    let mean = positive.iter().sum::<u64>() as f64 / positive.len() as f64;
    let mut pts: Vec<(u64, u32)> = Vec::new();
    for (i, (&w, &s)) in weights.iter().zip(seeds).enumerate() {
        if w == 0 {
            continue;
        }
        let count = ((f64::from(vnodes.max(1)) * f64::from(w) / mean).round() as u64).max(1);
        for j in 1..=count {
            pts.push((mix64(s.wrapping_add(j.wrapping_mul(GOLDEN))), i as u32));
        }
    }
    pts.sort_unstable();
    let (points, owners): (Vec<u64>, Vec<u32>) = pts.into_iter().unzip();
    (points.into_boxed_slice(), owners.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMES: [HashScheme; 3] = [HashScheme::Rendezvous, HashScheme::MAGLEV, HashScheme::RING];

    fn backends(n: u32) -> Vec<(u32, u32)> {
        (0..n).map(|i| (i * 7919 + 1, 1)).collect()
    }

    #[test]
    fn hash_key_is_xxh3() {
        // Pinned: a change here would remap every key on upgrade.
        assert_eq!(hash_key(b""), 0x2d06_8005_38d3_94c2);
        assert_ne!(hash_key(b"session-a"), hash_key(b"session-b"));
    }

    #[test]
    fn empty_and_zero_weight() {
        for scheme in SCHEMES {
            let empty = HashRing::with_scheme(scheme, &[]);
            assert!(empty.is_empty());
            assert_eq!(empty.pick(1, |_| true), None);
            assert_eq!(empty.pick_bounded(1, &[], 1.25, |_| true), None);
            let zero = HashRing::with_scheme(scheme, &[(1, 0), (2, 3), (3, 0)]);
            for k in 0..1000u64 {
                assert_eq!(zero.pick(mix64(k), |_| true), Some(1), "{scheme:?}");
                assert_eq!(
                    zero.pick_bounded(mix64(k), &[9, 9, 0], 1.0, |_| true),
                    Some(1)
                );
            }
            assert_eq!(zero.pick(5, |i| i != 1), None);
        }
    }

    #[test]
    fn ineligible_backends_are_skipped_and_others_keep_their_keys() {
        for scheme in SCHEMES {
            let ring = HashRing::with_scheme(scheme, &backends(5));
            for k in 0..2000u64 {
                let key = mix64(k);
                let first = ring.pick(key, |_| true);
                let without_2 = ring.pick(key, |i| i != 2);
                assert_ne!(without_2, Some(2));
                if first != Some(2) {
                    assert_eq!(
                        first, without_2,
                        "{scheme:?}: key moved off a healthy backend"
                    );
                }
            }
        }
    }

    #[test]
    fn weights_are_honoured() {
        for scheme in SCHEMES {
            let ring = HashRing::with_scheme(scheme, &[(11, 1), (22, 3)]);
            let heavy = (0..100_000u64)
                .filter(|&k| ring.pick(mix64(k), |_| true) == Some(1))
                .count();
            let share = heavy as f64 / 100_000.0;
            assert!((share - 0.75).abs() < 0.03, "{scheme:?}: {share}");
        }
    }

    #[test]
    fn bounded_walks_past_a_full_backend() {
        for scheme in SCHEMES {
            let ring = HashRing::with_scheme(scheme, &backends(4));
            let key = mix64(99);
            let first = ring.pick(key, |_| true).unwrap_or(0);
            let mut loads = [1u32; 4];
            loads[first] = 100;
            let next = ring.pick_bounded(key, &loads, 1.25, |_| true);
            assert!(next.is_some() && next != Some(first));
            // Same loads, unbounded: stays.
            assert_eq!(
                ring.pick_bounded(key, &loads, f64::INFINITY, |_| true),
                Some(first)
            );
            // c below 1 acts as 1; NaN too.
            assert!(ring
                .pick_bounded(key, &[5, 5, 5, 5], 0.5, |_| true)
                .is_some());
            assert!(ring
                .pick_bounded(key, &[5, 5, 5, 5], f64::NAN, |_| true)
                .is_some());
        }
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100), 101);
        assert!(!is_prime(1));
        let ring = HashRing::with_scheme(HashScheme::Maglev { table_size: 10 }, &backends(3));
        match &ring.table {
            Table::Maglev { entries } => assert_eq!(entries.len(), 11),
            other => panic!("{other:?}"),
        }
    }
}
