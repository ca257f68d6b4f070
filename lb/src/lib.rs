//! Backend choice for mcplb: hashing, least-load and health state. No I/O: time and randomness are arguments.
//!
//! The foundation picks backends round-robin ([`RoundRobin`]); the load-balancing issue grows this crate.

use std::cell::Cell;

/// Round-robin cursor over `n` backends, one per core (not shared, so no atomics).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// A cursor whose first pick is `start % n`; workers start at their own index so that
    /// the first sessions on different cores do not all land on backend 0.
    pub fn starting_at(start: usize) -> Self {
        RoundRobin {
            next: Cell::new(start),
        }
    }

    /// Picks the next index in `0..n`, or `None` when `n` is zero.
    pub fn pick(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let i = self.next.get() % n;
        self.next.set(i.wrapping_add(1));
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_all_backends() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        assert_eq!(rr.pick(0), None);
    }
}
