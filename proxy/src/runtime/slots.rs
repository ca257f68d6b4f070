//! The idle set's slot table: values in fixed-size chunks, allocated as needed, so the table
//! grows by a chunk at a time rather than doubling, and gives memory back as it empties (the
//! doubling `Vec` it replaced never shrank). The RSS jumps of 1-2 MiB seen while idle
//! connections open are mimalloc's transparent huge pages, not the table: with
//! `MIMALLOC_ALLOW_THP=0` both grow linearly (`bench/results/2026-12-07-reset-memory.md`).
//!
//! Each value gets a ticket: its slot's index and the slot's generation while it stays there,
//! so a late event for an earlier occupant is recognised ([`SlotTable::remove`] returns
//! `None`). A new value goes to the lowest chunk with room, so the high chunks empty as the
//! table shrinks; an empty chunk is freed when another one is already empty (one empty chunk
//! is kept as a spare, so a table that hovers at a chunk's edge does not allocate and free a
//! chunk per value).

/// Slots of `T` that fit in a chunk of at most `bytes` (one at least). The idle set's chunks
/// are 16 KiB, one of mimalloc's size classes: a chunk of 128 parked connections (19 456 bytes)
/// was served from the 20 KiB class, and measured about 9 bytes more per idle connection than
/// the doubling `Vec` it replaced.
pub(crate) const fn per_chunk<T>(bytes: usize) -> usize {
    let n = bytes / std::mem::size_of::<Slot<T>>();
    if n == 0 {
        1
    } else {
        n
    }
}

/// No slot (the end of a chunk's free list).
const NONE: u32 = u32::MAX;

/// Which value: its slot's index (low 32 bits) and the slot's generation (high 32 bits).
pub(crate) type Ticket = u64;

fn ticket(index: u32, generation: u32) -> Ticket {
    u64::from(index) | (u64::from(generation) << 32)
}

pub(crate) struct Slot<T> {
    /// Bumped every time the slot is emptied.
    generation: u32,
    /// The next free slot of the chunk (while this one is free).
    next: u32,
    value: Option<T>,
}

struct Chunk<T> {
    slots: Box<[Slot<T>]>,
    used: usize,
    /// The first free slot, or [`NONE`].
    free: u32,
}

/// A chunk's place: the chunk while it is allocated, and the generation its slots start at
/// when it is allocated again (past every generation it gave out before).
struct Place<T> {
    chunk: Option<Chunk<T>>,
    base: u32,
}

/// Values in chunks of `N` slots (see the module's comment and [`per_chunk`]).
pub(crate) struct SlotTable<T, const N: usize> {
    places: Vec<Place<T>>,
    /// Bit `k` set: place `k` can take a value (its chunk has a free slot, or is not
    /// allocated).
    open: Vec<u64>,
    /// An allocated chunk with no value, kept for the next one.
    spare: Option<usize>,
}

impl<T, const N: usize> Default for SlotTable<T, N> {
    fn default() -> Self {
        SlotTable {
            places: Vec::new(),
            open: Vec::new(),
            spare: None,
        }
    }
}

impl<T, const N: usize> SlotTable<T, N> {
    /// Values held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.places
            .iter()
            .filter_map(|p| p.chunk.as_ref())
            .map(|c| c.used)
            .sum()
    }

    /// Chunks allocated now.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.places.iter().filter(|p| p.chunk.is_some()).count()
    }

    fn set_open(&mut self, k: usize, open: bool) {
        let (w, bit) = (k / 64, 1u64 << (k % 64));
        if self.open.len() <= w {
            self.open.resize(w + 1, 0);
        }
        if let Some(word) = self.open.get_mut(w) {
            if open {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    /// The lowest place that can take a value, if any.
    fn lowest_open(&self) -> Option<usize> {
        self.open
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    /// Stores `v` and gives its ticket; gives `v` back when the table is full (`u32` slots).
    pub(crate) fn insert(&mut self, v: T) -> Result<Ticket, T> {
        let k = self.lowest_open().unwrap_or(self.places.len());
        // The slots' indices must fit the ticket's 32 bits.
        let Some(first) = k
            .checked_add(1)
            .and_then(|n| n.checked_mul(N))
            .and_then(|end| u32::try_from(end).ok())
            .map(|end| end - N as u32)
        else {
            return Err(v);
        };
        if k == self.places.len() {
            self.places.push(Place {
                chunk: None,
                base: 0,
            });
        }
        let Some(place) = self.places.get_mut(k) else {
            return Err(v);
        };
        let base = place.base;
        let chunk = place.chunk.get_or_insert_with(|| Chunk::new::<N>(base));
        let i = chunk.free;
        let Some(slot) = chunk.slots.get_mut(i as usize) else {
            return Err(v);
        };
        chunk.free = slot.next;
        slot.value = Some(v);
        chunk.used += 1;
        let (full, generation) = (chunk.used == N, slot.generation);
        if self.spare == Some(k) {
            self.spare = None;
        }
        self.set_open(k, !full);
        Ok(ticket(first + i, generation))
    }

    /// Takes the value of `ticket`, if it is still there (not an earlier occupant's).
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<T> {
        let (index, generation) = (ticket as u32 as usize, (ticket >> 32) as u32);
        let k = index / N;
        let chunk = self.places.get_mut(k)?.chunk.as_mut()?;
        let slot = chunk.slots.get(index % N)?;
        if slot.generation != generation || slot.value.is_none() {
            return None;
        }
        let v = chunk.vacate(index % N);
        self.vacated(k);
        v
    }

    /// Takes every value `pred` picks, handing each to `each` with its ticket.
    pub(crate) fn take_where(
        &mut self,
        mut pred: impl FnMut(&T) -> bool,
        mut each: impl FnMut(Ticket, T),
    ) {
        for k in 0..self.places.len() {
            let Some(Some(chunk)) = self.places.get_mut(k).map(|p| p.chunk.as_mut()) else {
                continue;
            };
            let mut taken = false;
            for i in 0..N {
                let Some(slot) = chunk.slots.get(i) else {
                    break;
                };
                if !slot.value.as_ref().is_some_and(&mut pred) {
                    continue;
                }
                let t = ticket((k * N + i) as u32, slot.generation);
                if let Some(v) = chunk.vacate(i) {
                    taken = true;
                    each(t, v);
                }
            }
            if taken {
                self.vacated(k);
            }
        }
    }

    /// Bookkeeping after slots of chunk `k` were vacated.
    fn vacated(&mut self, k: usize) {
        self.set_open(k, true);
        let empty = self
            .places
            .get(k)
            .and_then(|p| p.chunk.as_ref())
            .is_some_and(|c| c.used == 0);
        if !empty {
            return;
        }
        // One empty chunk is kept (the lower one); another is freed.
        let free = match self.spare {
            None => {
                self.spare = Some(k);
                return;
            }
            Some(s) if s == k => return,
            Some(s) => {
                self.spare = Some(s.min(k));
                s.max(k)
            }
        };
        if let Some(place) = self.places.get_mut(free) {
            if let Some(chunk) = place.chunk.take() {
                place.base = chunk.next_generation();
            }
        }
    }
}

impl<T> Chunk<T> {
    fn new<const N: usize>(generation: u32) -> Chunk<T> {
        let slots = (0..N)
            .map(|i| Slot {
                generation,
                next: if i + 1 < N { (i + 1) as u32 } else { NONE },
                value: None,
            })
            .collect();
        Chunk {
            slots,
            used: 0,
            free: 0,
        }
    }

    /// Empties slot `i` (bumping its generation) and puts it on the free list.
    fn vacate(&mut self, i: usize) -> Option<T> {
        let slot = self.slots.get_mut(i)?;
        let v = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.next = self.free;
        self.free = i as u32;
        self.used -= 1;
        Some(v)
    }

    /// A generation past every one this chunk gave out (for its slots when it comes back).
    fn next_generation(&self) -> u32 {
        self.slots
            .iter()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0)
            .wrapping_add(1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn grows_a_chunk_at_a_time_and_frees_what_empties() {
        let mut t: SlotTable<usize, 4> = SlotTable::default();
        let tickets: Vec<Ticket> = (0..10).map(|v| t.insert(v).unwrap()).collect();
        assert_eq!((t.len(), t.chunks()), (10, 3));
        // Slots 0..10 in order: the lowest chunk with room is filled first.
        for (i, tk) in tickets.iter().enumerate() {
            assert_eq!(*tk as u32 as usize, i);
        }
        // Emptying the last two chunks keeps one of them as a spare.
        for tk in &tickets[4..] {
            assert!(t.remove(*tk).is_some());
        }
        assert_eq!((t.len(), t.chunks()), (4, 2));
        // A stale ticket finds nothing, even once its slot is taken again.
        assert_eq!(t.remove(tickets[5]), None);
        let again = t.insert(99).unwrap();
        assert_eq!(
            again as u32 / 4,
            1,
            "the spare chunk is the lowest with room"
        );
        assert_ne!(again, tickets[4]);
        assert_eq!(t.remove(tickets[4]), None);
        assert_eq!(t.remove(again), Some(99));
        for tk in &tickets[..4] {
            assert!(t.remove(*tk).is_some());
        }
        assert_eq!((t.len(), t.chunks()), (0, 1));
    }

    #[test]
    fn a_chunk_freed_and_allocated_again_gives_new_tickets() {
        let mut t: SlotTable<u8, 2> = SlotTable::default();
        let a: Vec<Ticket> = (0..6).map(|v| t.insert(v).unwrap()).collect();
        for tk in &a {
            t.remove(*tk).unwrap();
        }
        assert_eq!(t.chunks(), 1);
        let b: Vec<Ticket> = (0..6).map(|v| t.insert(v).unwrap()).collect();
        for tk in &a {
            assert!(!b.contains(tk), "ticket {tk:#x} given out twice");
            assert_eq!(t.remove(*tk), None);
        }
    }

    #[test]
    fn take_where_takes_what_it_picks_and_keeps_the_rest() {
        let mut t: SlotTable<u32, 4> = SlotTable::default();
        let tickets: Vec<Ticket> = (0..20).map(|v| t.insert(v).unwrap()).collect();
        let mut got = Vec::new();
        t.take_where(|v| *v >= 8, |tk, v| got.push((tk, v)));
        assert_eq!(got.len(), 12);
        assert!(got.iter().all(|(tk, v)| tickets[*v as usize] == *tk));
        assert_eq!((t.len(), t.chunks()), (8, 3));
        t.take_where(|_| true, |_, _| {});
        assert_eq!((t.len(), t.chunks()), (0, 1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert,
        /// The n-th live value (modulo their number).
        Remove(usize),
        /// A ticket handed out before (live or not).
        RemoveOld(usize),
        /// Takes the values divisible by this.
        TakeWhere(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Insert),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => any::<usize>().prop_map(Op::RemoveOld),
            1 => (1u32..5).prop_map(Op::TakeWhere),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The table against a map: every value comes back once, by its own ticket only; no
        /// two live values share a ticket; at most one allocated chunk is empty.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut t: SlotTable<u32, 3> = SlotTable::default();
            let mut live: HashMap<Ticket, u32> = HashMap::new();
            let mut handed: Vec<Ticket> = Vec::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Insert => {
                        let tk = t.insert(next).unwrap();
                        prop_assert!(!live.contains_key(&tk));
                        live.insert(tk, next);
                        handed.push(tk);
                        next += 1;
                    }
                    Op::Remove(n) if !live.is_empty() => {
                        let mut keys: Vec<_> = live.keys().copied().collect();
                        keys.sort_unstable();
                        let tk = keys[n % keys.len()];
                        prop_assert_eq!(t.remove(tk), live.remove(&tk));
                        prop_assert_eq!(t.remove(tk), None);
                    }
                    Op::Remove(_) => {}
                    Op::RemoveOld(n) if !handed.is_empty() => {
                        let tk = handed[n % handed.len()];
                        prop_assert_eq!(t.remove(tk), live.remove(&tk));
                    }
                    Op::RemoveOld(_) => {}
                    Op::TakeWhere(d) => {
                        let mut got = Vec::new();
                        t.take_where(|v| v % d == 0, |tk, v| got.push((tk, v)));
                        for (tk, v) in got {
                            prop_assert_eq!(live.remove(&tk), Some(v));
                        }
                        prop_assert!(live.values().all(|v| v % d != 0));
                    }
                }
                prop_assert_eq!(t.len(), live.len());
                let empty = t.places.iter().filter(|p| p.chunk.as_ref().is_some_and(|c| c.used == 0)).count();
                prop_assert!(empty <= 1, "{} empty chunks allocated", empty);
                let used: usize = t.places.iter().filter_map(|p| p.chunk.as_ref()).map(|c| c.used).sum();
                prop_assert_eq!(used, live.len());
            }
        }
    }
}
