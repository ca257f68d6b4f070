//! Event counters striped over cache lines, so that cores counting at once do not fight over
//! one line; a read sums the stripes (the house rule: count per core, merge when read).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter; more than the cores we expect to share one hot counter.
const STRIPES: usize = 8;

/// Hands each thread a stripe, round-robin, the first time it counts anything.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn my_stripe() -> usize {
    STRIPE.with(|stripe| match stripe.get() {
        Some(index) => index,
        None => {
            let index = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(Some(index));
            index
        }
    })
}

/// A `u64` padded to its own cache-line pair (adjacent-line prefetch pulls lines in twos).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A monotonically increasing event count.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl StripedCounter {
    /// Adds `n` on the calling thread's stripe.
    pub(crate) fn add(&self, n: u64) {
        if let Some(stripe) = self.stripes.get(my_stripe()) {
            stripe.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The total over all stripes.
    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_threads() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                });
            }
        });
        assert_eq!(counter.sum(), 4000);
    }
}
