//! A boxed future whose allocation a later one of the same layout reuses: the per-request
//! futures that are boxed so an idle connection's task stays small (`runtime::boxed`).
//!
//! Why not `Box::pin`: those futures hold monoio timers, whose entries are cache-line padded
//! (`repr(align(128))`), so each box is a 128-aligned allocation, which mimalloc serves through
//! its over-allocating aligned path and its slow path every time (about 225 instructions per
//! allocation, two per request, measured with callgrind). A block kept per thread is taken
//! and given back in a few instructions.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks kept per thread (of any layouts): enough for the futures of the requests a core
/// serves at once under moderate load; past it, blocks are freed as usual.
const KEEP: usize = 16;

/// Freed blocks of this thread, with their layouts.
struct Blocks(Vec<(Layout, NonNull<u8>)>);

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, ptr) in self.0.drain(..) {
            // SAFETY: allocated with this layout by `alloc` (see `Reused::new`), owned here.
            #[allow(unsafe_code)]
            unsafe {
                std::alloc::dealloc(ptr.as_ptr(), layout)
            };
        }
    }
}

thread_local! {
    static BLOCKS: RefCell<Blocks> = const { RefCell::new(Blocks(Vec::new())) };
}

/// A future in a heap block of its own, which goes back to this thread's blocks when it drops.
/// Not `Send`: the block returns to the thread that holds it.
pub(crate) struct Reused<F: Future> {
    ptr: NonNull<F>,
    _owns: PhantomData<(F, *mut ())>,
}

impl<F: Future> Reused<F> {
    /// `make()`'s future, written straight into a block (a kept one when there is one).
    #[inline(always)]
    pub(crate) fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        let ptr = if layout.size() == 0 {
            NonNull::<F>::dangling()
        } else {
            take(layout).unwrap_or_else(|| alloc(layout)).cast::<F>()
        };
        // SAFETY: `ptr` is valid for writes of an `F` and suitably aligned (a block of `F`'s
        // layout, or dangling for a zero-sized `F`). If `make` panics the block is leaked,
        // never freed twice.
        #[allow(unsafe_code)]
        unsafe {
            ptr.as_ptr().write(make())
        };
        Reused {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The future, pinned in its block (to call its own methods between polls).
    pub(crate) fn as_mut(&mut self) -> Pin<&mut F> {
        // SAFETY: as in `poll`: the future never moves out of its block until `drop`, and
        // `&mut self` gives exclusive access.
        #[allow(unsafe_code)]
        unsafe {
            Pin::new_unchecked(&mut *self.ptr.as_ptr())
        }
    }
}

impl<F: Future> Future for Reused<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives at `ptr` until `drop`, which is the only place it moves out
        // of (dropped in place): pinned for its whole life. `&mut self` gives exclusive access.
        #[allow(unsafe_code)]
        let fut = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        fut.poll(cx)
    }
}

impl<F: Future> Drop for Reused<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the future at `ptr` was written in `new` and is dropped only here. If its
        // drop panics the block is leaked, never reused while it holds a half-dropped future.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr())
        };
        if layout.size() != 0 {
            give(layout, self.ptr.cast());
        }
    }
}

fn alloc(layout: Layout) -> NonNull<u8> {
    // SAFETY: `layout` has a non-zero size (checked by the caller).
    #[allow(unsafe_code)]
    let p = unsafe { std::alloc::alloc(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// A kept block of exactly `layout`, if there is one.
fn take(layout: Layout) -> Option<NonNull<u8>> {
    BLOCKS
        .try_with(|b| {
            let mut b = b.try_borrow_mut().ok()?;
            let i = b.0.iter().position(|(l, _)| *l == layout)?;
            Some(b.0.swap_remove(i).1)
        })
        .ok()
        .flatten()
}

/// Keeps a freed block of `layout`, or frees it when enough are kept (or the thread is ending).
fn give(layout: Layout, ptr: NonNull<u8>) {
    let kept = BLOCKS
        .try_with(|b| match b.try_borrow_mut() {
            Ok(mut b) if b.0.len() < KEEP => {
                b.0.push((layout, ptr));
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated with this layout by `alloc`, no longer used.
        #[allow(unsafe_code)]
        unsafe {
            std::alloc::dealloc(ptr.as_ptr(), layout)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn a_block_is_reused_and_what_the_future_holds_is_dropped() {
        let held = Rc::new(());
        let first = {
            let h = held.clone();
            let f = Reused::new(|| async move { Rc::strong_count(&h) + [1u8; 300].len() });
            let at = f.ptr.as_ptr() as usize;
            assert_eq!(block_on(f), 2 + 300);
            at
        };
        assert_eq!(
            Rc::strong_count(&held),
            1,
            "the future's captures were dropped"
        );
        let h = held.clone();
        let again = Reused::new(|| async move { Rc::strong_count(&h) + [1u8; 300].len() });
        assert_eq!(
            again.ptr.as_ptr() as usize,
            first,
            "the same layout took the kept block"
        );
        drop(again);
        assert_eq!(
            Rc::strong_count(&held),
            1,
            "dropped unpolled, its captures too"
        );
    }

    #[test]
    fn zero_sized_and_over_aligned_futures() {
        struct Seven;
        impl Future for Seven {
            type Output = u8;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
                Poll::Ready(7)
            }
        }
        assert_eq!(block_on(Reused::new(|| Seven)), 7);
        #[repr(align(128))]
        struct Wide([u8; 200]);
        let w = Wide([3; 200]);
        let f = Reused::new(move || async move {
            let w = w;
            w.0[199]
        });
        fn align<F: Future>(_: &Reused<F>) -> usize {
            std::mem::align_of::<F>()
        }
        assert_eq!(align(&f), 128);
        assert_eq!(f.ptr.as_ptr() as usize % 128, 0);
        assert_eq!(block_on(f), 3);
    }
}
