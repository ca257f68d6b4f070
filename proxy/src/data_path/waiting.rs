//! Calls waiting for answers their client POSTs in its session, which may reach any core:
//! a human approval's verdict (`confirm`), a 2025-era client's answers to a 2026-07-28
//! backend's input requests (`era_ask`). One process-wide table per kind of wait, by a random
//! token: the slot holds what has come and the waiting task's waker, so an answer wakes its
//! call at once and no core polls. The mutex is taken only when a call starts or stops
//! waiting, when an answer comes, and when the woken call looks: never by a request that
//! waits for nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::Waker;

/// The calls of one kind waiting for their answers (`V`: what has come so far).
pub(crate) struct Table<V: 'static> {
    slots: Mutex<Option<HashMap<u64, Slot<V>>>>,
    /// Most calls waiting at once.
    max: usize,
}

struct Slot<V> {
    /// The sealed session id the call came in: only an answer in that session counts.
    session: Vec<u8>,
    value: V,
    waker: Option<Waker>,
}

impl<V> Table<V> {
    /// An empty table for at most `max` waiting calls.
    pub(crate) const fn new(max: usize) -> Table<V> {
        Table {
            slots: Mutex::new(None),
            max,
        }
    }

    /// Registers a call waiting under `token` in `session`, `value` what has come so far:
    /// `None` when the table is full (or its mutex was poisoned). It is removed when the
    /// [`Registered`] drops.
    pub(crate) fn register(
        &'static self,
        token: u64,
        session: &[u8],
        value: V,
    ) -> Option<Registered<V>> {
        let mut slots = self.slots.lock().ok()?;
        let slots = slots.get_or_insert_with(HashMap::new);
        if slots.len() >= self.max {
            return None;
        }
        slots.insert(
            token,
            Slot {
                session: session.to_vec(),
                value,
                waker: None,
            },
        );
        Some(Registered { table: self, token })
    }

    /// Hands an answer to the call waiting under `token` in `session`: `fill` puts it into
    /// what has come and says whether it took it; then the call wakes. Whether one took it.
    pub(crate) fn hand_over(
        &self,
        token: u64,
        session: &[u8],
        fill: impl FnOnce(&mut V) -> bool,
    ) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return false;
        };
        let Some(slot) = slots.as_mut().and_then(|s| s.get_mut(&token)) else {
            return false;
        };
        if slot.session != session || !fill(&mut slot.value) {
            return false;
        }
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        true
    }
}

/// A call registered in a [`Table`], removed when this drops (however its wait ends).
pub(crate) struct Registered<V: 'static> {
    table: &'static Table<V>,
    token: u64,
}

impl<V> Registered<V> {
    /// What `take` makes of what has come, once it makes something; else `None`, and
    /// `waker` wakes when the next answer comes.
    pub(crate) fn poll<R>(
        &self,
        waker: &Waker,
        take: impl FnOnce(&mut V) -> Option<R>,
    ) -> Option<R> {
        let mut slots = self.table.slots.lock().ok()?;
        let slot = slots.as_mut()?.get_mut(&self.token)?;
        let got = take(&mut slot.value);
        if got.is_none() && !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        got
    }
}

impl<V> Drop for Registered<V> {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.table.slots.lock() {
            if let Some(s) = slots.as_mut() {
                s.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    static TABLE: Table<Vec<Option<u8>>> = Table::new(2);

    #[test]
    fn answers_wake_their_call_in_their_session_only() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let all = |v: &mut Vec<Option<u8>>| {
            v.iter()
                .all(Option::is_some)
                .then(|| v.iter_mut().filter_map(Option::take).collect::<Vec<u8>>())
        };
        let r = TABLE.register(1, b"s", vec![None, None]).unwrap();
        assert_eq!(r.poll(&waker, all), None);
        let put = |i: usize, x: u8| {
            move |v: &mut Vec<Option<u8>>| v.get_mut(i).map(|s| *s = Some(x)).is_some()
        };
        // Another session's answer, or one for no call, is not taken.
        assert!(!TABLE.hand_over(1, b"other", put(0, 7)));
        assert!(!TABLE.hand_over(9, b"s", put(0, 7)));
        assert!(!TABLE.hand_over(1, b"s", put(5, 7)));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(TABLE.hand_over(1, b"s", put(1, 8)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(r.poll(&waker, all), None);
        assert!(TABLE.hand_over(1, b"s", put(0, 7)));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(r.poll(&waker, all), Some(vec![7, 8]));
        // Full at two; a dropped registration leaves.
        let r2 = TABLE.register(2, b"s", vec![None]).unwrap();
        assert!(TABLE.register(3, b"s", vec![None]).is_none());
        drop(r);
        drop(r2);
        assert!(!TABLE.hand_over(1, b"s", put(0, 1)));
        assert!(TABLE.register(3, b"s", vec![None]).is_some());
    }
}
