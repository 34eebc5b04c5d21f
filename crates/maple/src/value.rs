//! How a value lives in a leaf slot: one word.
//!
//! # Owns
//! The [`Value`] trait, which turns a stored value into a slot word and
//! back, and its implementations:
//! - `Arc<T>`: the word is the `Arc`'s pointer, and each slot holding it
//!   owns one strong count. This is what Linux stores (a `void *` to a
//!   `vm_area_struct`), with the count making a split entry safe to drop.
//!   Readers get `&T`, valid for their guard.
//! - small integers (`u8`, `u16`, `u32`, `NonZeroU64`, `NonZeroUsize`): the
//!   word *is* the value, as Linux's `xa_mk_value()` keeps an integer in
//!   the slot. Readers get a copy, and a lookup costs no cache miss beyond
//!   the leaf's.
//!
//! # Invariants
//! - V1. A stored value is one non-null word: null means "empty range"
//!   (node.rs N4).
//! - V2. Each non-null slot word owns its value once: the tree calls
//!   [`Value::clone_word`] when a store leaves the same word in two slots
//!   (an entry split in two) and [`Value::from_word`] once per slot word it
//!   gives up, after a grace period (write.rs R1), or at once when the tree
//!   is dropped.
//! - V3. Where [`Value::OWNS`] is false, a word owns nothing, so the writer
//!   retires nothing for it (no grace-period callback for a value).

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;

/// A slot word: a pointer, or an integer kept in a pointer's bits (V1).
pub(crate) type Word = *const ();

/// A type a [`MapleTree`](crate::MapleTree) can store: one word per slot.
///
/// # Safety
/// An implementation must keep these promises, which the tree's unsafe code
/// relies on:
/// - `into_word` never returns null, and `from_word(into_word(v))` gives back
///   `v`.
/// - After `clone_word(w)`, `from_word(w)` may be called once more: each call
///   gives back an owner of the same value (V2).
/// - `borrow(w)`, for a word not yet given up by `from_word`, returns a
///   reference or copy valid for `'a`, while the tree keeps the word's owner
///   alive (for readers: until a grace period after the word left the tree).
/// - `OWNS` is `false` only if `from_word` and `clone_word` are free of side
///   effects (the tree may skip them).
pub unsafe trait Value: Send + Sync + Sized + 'static {
    /// What a read returns: `&T` for `Arc<T>`, the value itself for
    /// integers kept in the slot.
    type Ref<'a>: Copy;

    /// Whether a word owns something that must be released (V3).
    const OWNS: bool;

    /// The slot word for `self`; never null.
    fn into_word(self) -> Word;

    /// Takes back one owner of the value (V2).
    ///
    /// # Safety
    /// `w` came from `into_word` (or was cloned by `clone_word`) and this
    /// owner is taken back once.
    unsafe fn from_word(w: Word) -> Self;

    /// Makes one more owner of the value behind `w` (V2).
    ///
    /// # Safety
    /// `w` still has an owner.
    unsafe fn clone_word(w: Word);

    /// Reads the value behind `w`.
    ///
    /// # Safety
    /// `w` has an owner for all of `'a`.
    unsafe fn borrow<'a>(w: Word) -> Self::Ref<'a>;
}

// SAFETY: `Arc::into_raw` is never null and round-trips through
// `Arc::from_raw`; `increment_strong_count` makes one more owner; a reference
// through the pointer is valid while a count is held, which the caller
// guarantees for `'a`.
unsafe impl<T: Send + Sync + 'static> Value for Arc<T> {
    type Ref<'a> = &'a T;
    const OWNS: bool = true;

    #[inline(always)]
    fn into_word(self) -> Word {
        Arc::into_raw(self).cast()
    }
    #[inline(always)]
    unsafe fn from_word(w: Word) -> Self {
        // SAFETY: `w` came from `Arc::into_raw` of an `Arc<T>` (contract).
        unsafe { Arc::from_raw(w.cast::<T>()) }
    }
    #[inline(always)]
    unsafe fn clone_word(w: Word) {
        // SAFETY: as above, and a count is still held (contract).
        unsafe { Arc::increment_strong_count(w.cast::<T>()) }
    }
    #[inline(always)]
    unsafe fn borrow<'a>(w: Word) -> Self::Ref<'a> {
        // SAFETY: a count is held for `'a` (contract), so the `T` is alive.
        unsafe { &*w.cast::<T>() }
    }
}

/// Integers that may be zero are kept as `value + 1`, so that no stored
/// word is null (V1).
macro_rules! inline_small {
    ($($t:ty),*) => {$(
        // SAFETY: `value + 1` of a type narrower than a word is never 0 and
        // `word - 1` gives it back; words own nothing (`OWNS` false), and
        // reads return copies.
        unsafe impl Value for $t {
            type Ref<'a> = $t;
            const OWNS: bool = false;

            #[inline(always)]
            fn into_word(self) -> Word {
                std::ptr::without_provenance(self as usize + 1)
            }
            #[inline(always)]
            unsafe fn from_word(w: Word) -> Self {
                (w.addr() - 1) as $t
            }
            #[inline(always)]
            unsafe fn clone_word(_: Word) {}
            #[inline(always)]
            unsafe fn borrow<'a>(w: Word) -> Self::Ref<'a> {
                (w.addr() - 1) as $t
            }
        }
    )*};
}

#[cfg(any(target_pointer_width = "64", target_pointer_width = "32"))]
inline_small!(u8, u16);
#[cfg(target_pointer_width = "64")]
inline_small!(u32);

/// Non-zero integers as wide as a word are kept as they are.
macro_rules! inline_nonzero {
    ($($t:ty => $int:ty),*) => {$(
        // SAFETY: a non-zero integer is a non-null word and round-trips
        // exactly; words own nothing, and reads return copies.
        unsafe impl Value for $t {
            type Ref<'a> = $t;
            const OWNS: bool = false;

            #[inline(always)]
            fn into_word(self) -> Word {
                std::ptr::without_provenance(self.get() as usize)
            }
            #[inline(always)]
            unsafe fn from_word(w: Word) -> Self {
                // SAFETY: `w` came from `into_word`, so it is non-zero.
                unsafe { <$t>::new_unchecked(w.addr() as $int) }
            }
            #[inline(always)]
            unsafe fn clone_word(_: Word) {}
            #[inline(always)]
            unsafe fn borrow<'a>(w: Word) -> Self::Ref<'a> {
                // SAFETY: as in `from_word`.
                unsafe { <$t>::new_unchecked(w.addr() as $int) }
            }
        }
    )*};
}

inline_nonzero!(NonZeroUsize => usize);
#[cfg(target_pointer_width = "64")]
inline_nonzero!(NonZeroU64 => u64);

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;

    fn round_trip<V: Value + PartialEq + std::fmt::Debug + Copy>(v: V)
    where
        for<'a> V::Ref<'a>: Into<V>,
    {
        let w = v.into_word();
        assert!(!w.is_null(), "V1: {v:?} made a null word");
        // SAFETY: `w` came from `into_word` and is taken back once.
        unsafe {
            assert_eq!(V::borrow(w).into(), v);
            assert_eq!(V::from_word(w), v);
        }
    }

    #[test]
    fn integers_round_trip_and_are_never_null() {
        for v in [0u8, 1, 254, 255] {
            round_trip(v);
        }
        for v in [0u16, 1, u16::MAX] {
            round_trip(v);
        }
        for v in [0u32, 1, u32::MAX - 1, u32::MAX] {
            round_trip(v);
        }
        for v in [1u64, 2, u64::MAX] {
            round_trip(NonZeroU64::new(v).unwrap());
        }
        for v in [1usize, usize::MAX] {
            round_trip(NonZeroUsize::new(v).unwrap());
        }
    }

    #[test]
    fn arc_words_own_one_count_each() {
        let a = Arc::new(7u64);
        let w = a.clone().into_word();
        assert_eq!(Arc::strong_count(&a), 2);
        // SAFETY: `w` owns one count; we clone it once and take both back.
        unsafe {
            Arc::<u64>::clone_word(w);
            assert_eq!(Arc::strong_count(&a), 3);
            assert_eq!(*Arc::<u64>::borrow(w), 7);
            drop(Arc::<u64>::from_word(w));
            drop(Arc::<u64>::from_word(w));
        }
        assert_eq!(Arc::strong_count(&a), 1);
    }
}
