//! Latency distributions that cost memory for the magnitudes they saw, not for their range.
//!
//! Values (µs) go into log-linear buckets: the `histogram` crate's layout with grouping power
//! 7, so values below 256 are exact and every power of two above is cut into 128 buckets (a
//! bucket is at most 1/128 = 0.78 % of its values wide: two significant digits and a bit).
//! Values up to 2^32 - 1 µs (71 minutes) are kept; longer ones count as that. The 3 328
//! buckets are stored in 26 chunks, one per power of two (the first two hold 0-255),
//! allocated the first time a value of that magnitude arrives: a tool whose calls take
//! 100 µs to 10 ms holds about 8 chunks, not the whole range. A bit per chunk says which ones
//! were written since the last [`Distribution::move_into`], so the per-second move costs in
//! proportion to the chunks touched, and nothing is ever swept or zeroed whole.
//!
//! Percentiles are computed by the `histogram` crate from the same buckets
//! ([`SparseHistogram`]), so the layout is checked against an implementation of its own.

use histogram::{Config, SparseHistogram};

const GROUPING_POWER: u32 = 7;
const MAX_VALUE_POWER: u32 = 32;
/// Largest value kept; larger ones are recorded as this.
pub const MAX_VALUE: u64 = (1 << MAX_VALUE_POWER) - 1;
/// Buckets per chunk: one power of two.
const CHUNK: usize = 1 << GROUPING_POWER;
/// Values below this are their own bucket.
const LINEAR: u64 = 2 << GROUPING_POWER;
/// Chunks: the linear range (two) and one per further power of two up to [`MAX_VALUE`].
const CHUNKS: usize =
    (LINEAR as usize + (MAX_VALUE_POWER - GROUPING_POWER - 1) as usize * CHUNK) / CHUNK;

/// A bucket counter: `u32` where a window cannot overflow it (a core's second, a 10 s slot),
/// `u64` where it can (since start).
pub trait Count: Copy + Default + Eq + Into<u64> + 'static {
    /// `self + n`, saturating.
    fn plus(self, n: u64) -> Self;
}

impl Count for u32 {
    #[inline]
    fn plus(self, n: u64) -> Self {
        self.saturating_add(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

impl Count for u64 {
    #[inline]
    fn plus(self, n: u64) -> Self {
        self.saturating_add(n)
    }
}

/// The bucket index of `v` (the crate's layout; a unit test holds the two together).
#[inline]
fn bucket_index(v: u64) -> usize {
    let v = v.min(MAX_VALUE);
    if v < LINEAR {
        return v as usize;
    }
    // Bits dropped by the bucket: the value's length minus `GROUPING_POWER + 1`.
    let s = (63 - v.leading_zeros()) - GROUPING_POWER;
    (((s as u64) << GROUPING_POWER) + (v >> s)) as usize
}

/// A value (clamped to [`MAX_VALUE`]) with its bucket worked out once: a request's latencies
/// go into a distribution per dimension (group, backend, method, tool), four of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    v: u64,
    index: usize,
}

impl Point {
    /// `v`, clamped, and its bucket.
    #[inline]
    pub fn new(v: u64) -> Point {
        let v = v.min(MAX_VALUE);
        Point {
            v,
            index: bucket_index(v),
        }
    }
}

/// One latency distribution: bucket counts plus the exact count, sum and maximum.
#[derive(Clone)]
pub struct Distribution<C: Count = u64> {
    chunks: [Option<Box<[C; CHUNK]>>; CHUNKS],
    /// Bit `i`: chunk `i` was written since the last move out.
    touched: u32,
    count: u64,
    sum: u64,
    max: u64,
}

impl<C: Count> Default for Distribution<C> {
    fn default() -> Self {
        Distribution {
            chunks: [const { None }; CHUNKS],
            touched: 0,
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl<C: Count> Distribution<C> {
    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.record_point(Point::new(v));
    }

    /// Records one value whose bucket is worked out already.
    #[inline]
    pub fn record_point(&mut self, p: Point) {
        self.add_bucket(p.index, 1);
        self.count += 1;
        self.sum = self.sum.saturating_add(p.v);
        self.max = self.max.max(p.v);
    }

    #[inline]
    fn add_bucket(&mut self, index: usize, n: u64) {
        let c = index / CHUNK;
        if let Some(chunk) = self.chunks.get_mut(c) {
            let chunk = chunk.get_or_insert_with(|| Box::new([C::default(); CHUNK]));
            if let Some(slot) = chunk.get_mut(index % CHUNK) {
                *slot = slot.plus(n);
                self.touched |= 1 << c;
            }
        }
    }

    fn add_totals(&mut self, count: u64, sum: u64, max: u64) {
        self.count = self.count.saturating_add(count);
        self.sum = self.sum.saturating_add(sum);
        self.max = self.max.max(max);
    }

    /// Calls `each(index, count)` for every non-zero bucket, in ascending order.
    fn for_each_bucket(&self, mut each: impl FnMut(usize, u64)) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if let Some(chunk) = chunk {
                for (i, n) in chunk.iter().enumerate() {
                    let n: u64 = (*n).into();
                    if n != 0 {
                        each(c * CHUNK + i, n);
                    }
                }
            }
        }
    }

    /// The chunk `c` of this distribution, allocated if it was not.
    fn chunk_mut(&mut self, c: usize) -> Option<&mut [C; CHUNK]> {
        let chunk = self.chunks.get_mut(c)?;
        self.touched |= 1 << c;
        Some(chunk.get_or_insert_with(|| Box::new([C::default(); CHUNK])))
    }

    /// Adds everything in `other`, a chunk at a time.
    pub fn add<D: Count>(&mut self, other: &Distribution<D>) {
        for (c, chunk) in other.chunks.iter().enumerate() {
            let Some(src) = chunk else { continue };
            let Some(dst) = self.chunk_mut(c) else {
                continue;
            };
            for (d, s) in dst.iter_mut().zip(src.iter()) {
                *d = d.plus((*s).into());
            }
        }
        self.add_totals(other.count, other.sum, other.max);
    }

    /// Adds what was recorded since the last move to `into`, then empties this distribution,
    /// keeping its chunks for the next second. Reads and zeroes only the chunks written since
    /// the last move, a chunk at a time.
    pub fn move_into<D: Count>(&mut self, into: &mut Distribution<D>) {
        let mut touched = std::mem::take(&mut self.touched);
        while touched != 0 {
            let c = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let (Some(Some(src)), Some(dst)) = (self.chunks.get_mut(c), into.chunk_mut(c)) else {
                continue;
            };
            for (d, s) in dst.iter_mut().zip(src.iter_mut()) {
                *d = d.plus((*s).into());
                *s = C::default();
            }
        }
        into.add_totals(self.count, self.sum, self.max);
        self.count = 0;
        self.sum = 0;
        self.max = 0;
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sum of the values recorded (exact, saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Mean of the values recorded (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Values recorded in buckets that start at or below `v` (a Prometheus `le` bucket).
    pub fn count_at_or_below(&self, v: u64) -> u64 {
        let last = bucket_index(v);
        let mut n = 0;
        self.for_each_bucket(|i, c| {
            if i <= last {
                n += c;
            }
        });
        n
    }

    /// The value at each quantile (0.0..=1.0): the upper end of the bucket holding it, at most
    /// the exact maximum. Zeros when empty.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        let mut out = [0; N];
        let Some(sparse) = self.sparse() else {
            return out;
        };
        let Ok(Some(r)) = sparse.quantiles(&qs) else {
            return out;
        };
        for (o, q) in out.iter_mut().zip(qs) {
            if let Some(b) = histogram::Quantile::new(q).ok().and_then(|q| r.get(&q)) {
                *o = b.end().min(self.max);
            }
        }
        out
    }

    /// The same buckets as the crate's sparse histogram.
    fn sparse(&self) -> Option<SparseHistogram> {
        let config = Config::new(GROUPING_POWER as u8, MAX_VALUE_POWER as u8).ok()?;
        let (mut index, mut count) = (Vec::new(), Vec::new());
        self.for_each_bucket(|i, n| {
            index.push(i as u32);
            count.push(n);
        });
        SparseHistogram::from_parts(config, index, count).ok()
    }

    /// Bytes this distribution holds: itself and its chunks.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.chunks.iter().flatten().count() * std::mem::size_of::<[C; CHUNK]>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_histogram_crate() {
        let mut values: Vec<u64> = (0..2000).collect();
        let mut v = 2000u64;
        while v < MAX_VALUE {
            values.extend([v - 1, v, v + 1, v + v / 3]);
            v = v * 9 / 8 + 1;
        }
        values.push(MAX_VALUE);
        for v in values {
            let v = v.min(MAX_VALUE);
            let mut d = Distribution::<u32>::default();
            d.record(v);
            let Some(s) = d.sparse() else {
                panic!("index of {v} rejected by the crate")
            };
            let Some(b) = s.iter().next() else {
                panic!("no bucket for {v}")
            };
            assert!(b.range().contains(&v), "{v} not in {:?}", b.range());
            let mut dense = histogram::Histogram::new(GROUPING_POWER as u8, MAX_VALUE_POWER as u8)
                .unwrap_or_else(|e| panic!("{e}"));
            dense.increment(v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                dense.as_slice().iter().position(|n| *n != 0),
                Some(bucket_index(v)),
                "{v}"
            );
        }
    }

    #[test]
    fn percentiles_within_a_bucket_and_exact_totals() {
        let mut d = Distribution::<u32>::default();
        for v in 1..=10_000u64 {
            d.record(v);
        }
        let [p50, p99, p100] = d.quantiles([0.5, 0.99, 1.0]);
        assert!((5000..=5000 + 5000 / 128 + 1).contains(&p50), "{p50}");
        assert!((9900..=9900 + 9900 / 128 + 1).contains(&p99), "{p99}");
        assert_eq!(p100, 10_000);
        assert_eq!(d.len(), 10_000);
        assert_eq!(d.sum(), 10_000 * 10_001 / 2);
        assert_eq!(d.max(), 10_000);
        assert_eq!(d.count_at_or_below(100), 100);
        assert_eq!(d.count_at_or_below(MAX_VALUE), 10_000);
        assert_eq!(Distribution::<u64>::default().quantiles([0.5]), [0]);
    }

    #[test]
    fn move_empties_the_source_and_feeds_both_targets() {
        let mut core = Distribution::<u32>::default();
        let mut since = Distribution::<u64>::default();
        for round in 0..3u64 {
            for v in [7, 300, 70_000, u64::MAX] {
                core.record(v.saturating_add(round));
            }
            let held = core.footprint();
            core.move_into(&mut since);
            assert!(core.is_empty());
            assert_eq!(core.touched, 0);
            assert_eq!(core.footprint(), held, "chunks are kept");
            let mut left = 0;
            core.for_each_bucket(|_, n| left += n);
            assert_eq!(left, 0);
        }
        assert_eq!(since.len(), 12);
        assert_eq!(since.max(), MAX_VALUE);
        assert_eq!(since.count_at_or_below(1000), 6);
        // Four magnitudes seen: the first linear chunk, 256..512, 65536..131072, the top.
        assert_eq!(since.chunks.iter().flatten().count(), 4);
        let mut merged = Distribution::<u32>::default();
        merged.add(&since);
        merged.add(&since);
        assert_eq!(merged.len(), 24);
        assert_eq!(merged.count_at_or_below(1000), 12);
        assert_eq!(merged.quantiles([0.0]), [7]);
    }
}
