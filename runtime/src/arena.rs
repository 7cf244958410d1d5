//! Working memory: the typed, 64-byte aligned regions a session or encoder
//! carves out of the memory its caller gives, and [`Arena`], memory that is
//! aligned already.
//!
//! Each session type declares its regions once, with `arena_layout!`: one
//! list of names and element types, from which come both the layout (the
//! element count of every region, which a `const fn` of the config fills in
//! and whose `bytes()` sizes the arena, at compile time if need be) and the
//! carving into slices. A region therefore cannot be counted and not carved,
//! or carved and not counted, and carving can be handed nothing but a
//! layout's regions (the carver is crate-private, used by the macro's
//! expansion alone). Carving checks every step and reports a short buffer
//! instead of panicking, even if a layout were somehow wrong.
//!
//! Owns: alignment, zeroing, carving, and the one `unsafe` step that hands
//! out a `static` arena ([`StaticArena::take`]). Must not touch: what the
//! regions mean (the sessions' business).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// Alignment of every region (a cache line; what AVX loads like).
pub const ARENA_ALIGN: usize = 64;

/// Bytes a region of `bytes` occupies once rounded up to the alignment.
pub const fn region(bytes: usize) -> usize {
    bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// Slack for aligning the start of an arbitrary caller buffer: what
/// `arena_bytes` adds to a layout's `bytes()`. An [`Arena`] needs none.
pub const ARENA_SLACK: usize = ARENA_ALIGN;

/// Memory of `N` bytes starting on a 64-byte boundary, so a layout of `N`
/// bytes fits it exactly (no [`ARENA_SLACK`]). Firmware keeps one in a
/// [`StaticArena`]; `Megabyte::session_in` and `Bigs::encoder_in` take it.
#[repr(C, align(64))]
pub struct Arena<const N: usize>([u8; N]);

const _: () = assert!(core::mem::align_of::<Arena<0>>() == ARENA_ALIGN);

impl<const N: usize> Arena<N> {
    pub const fn new() -> Self {
        Arena([0; N])
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// An [`Arena`] for a `static`, handed out once as `&'static mut` by
/// [`StaticArena::take`]: what firmware would otherwise write as a
/// `static mut` buffer and an `unsafe` borrow of it. The taken flag shares
/// the arena's alignment, so it occupies one 64-byte line: the RAM the
/// aligned arena saves in slack.
///
/// ```
/// use kilobyte_runtime::arena::StaticArena;
/// static ARENA: StaticArena<4096> = StaticArena::new();
/// let arena = ARENA.take().unwrap();
/// assert!(ARENA.take().is_none()); // never a second reference
/// # let _ = arena;
/// ```
pub struct StaticArena<const N: usize> {
    taken: AtomicBool,
    arena: UnsafeCell<Arena<N>>,
}

// SAFETY: the arena is reached only through `take`, which hands out its one
// reference at most once (the flag is swapped atomically), so no two
// threads, or callers, ever share it.
unsafe impl<const N: usize> Sync for StaticArena<N> {}

impl<const N: usize> StaticArena<N> {
    pub const fn new() -> Self {
        StaticArena {
            taken: AtomicBool::new(false),
            arena: UnsafeCell::new(Arena::new()),
        }
    }

    /// The arena, the first time; `None` ever after.
    // A `&mut` from `&self` is sound here only because the flag hands it
    // out once: this is the one place that turns shared into unique.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut Arena<N>> {
        if self.taken.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: the flag was clear and is now set for good, so this is the
        // only reference to the arena there will ever be.
        Some(unsafe { &mut *self.arena.get() })
    }
}

impl<const N: usize> Default for StaticArena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands out consecutive aligned, zeroed regions of a buffer; used only by
/// `arena_layout!`'s carving.
pub(crate) struct Carver<'a> {
    rest: &'a mut [u8],
    short: bool,
}

impl<'a> Carver<'a> {
    /// Starts at the first 64-byte boundary of `buf`; `None` when `buf`
    /// ends before it.
    pub(crate) fn new(buf: &'a mut [u8]) -> Option<Self> {
        let skip = buf.as_ptr().align_offset(ARENA_ALIGN);
        let rest = buf.get_mut(skip..)?;
        Some(Carver { rest, short: false })
    }

    /// The next region, of `n` elements; empty, and the carver marked
    /// short, when the buffer has no room for it.
    pub(crate) fn take<T: bytemuck::Pod>(&mut self, n: usize) -> &'a mut [T] {
        const { assert!(core::mem::align_of::<T>() <= ARENA_ALIGN) };
        let bytes = self.next(n.checked_mul(core::mem::size_of::<T>()));
        // Cannot fail: `bytes` starts on a boundary (see `next`; the const
        // check above) and holds exactly `n` elements, or none.
        bytemuck::cast_slice_mut(bytes)
    }

    /// The next `bytes` bytes, zeroed, and the rest up to the next boundary
    /// skipped; on a boundary even when empty (`rest` always starts on
    /// one), so the cast in `take` holds. One copy for every element type
    /// keeps firmware code small.
    #[inline(never)]
    fn next(&mut self, bytes: Option<usize>) -> &'a mut [u8] {
        let rest = core::mem::take(&mut self.rest);
        let fits = bytes
            .and_then(|b| Some((b, b.checked_next_multiple_of(ARENA_ALIGN)?)))
            .filter(|&(_, size)| size <= rest.len());
        self.short |= fits.is_none();
        let (bytes, size) = fits.unwrap_or((0, 0));
        let (head, tail) = rest.split_at_mut(size);
        self.rest = tail;
        // `bytes <= size` already; `min` lets the compiler see it and drop
        // the bounds check's panic.
        let (head, _) = head.split_at_mut(bytes.min(size));
        head.fill(0);
        head
    }

    /// Whether every region so far had room.
    pub(crate) fn fits(&self) -> bool {
        !self.short
    }
}

/// Declares a session type's arena once: `pub struct Layout, Mem { name:
/// Type, ... }` defines `Layout` (the element count of each region, public,
/// with a `const fn bytes`) and `Mem<'a>` (the regions as `&'a mut [Type]`,
/// carved by `Mem::carve(&layout, buf)` in the order listed).
macro_rules! arena_layout {
    (
        $(#[$meta:meta])*
        pub struct $layout:ident, $mem:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $layout {
            $($(#[$field_meta])* pub $field: usize,)*
        }

        impl $layout {
            /// No regions: the layout of a config that cannot run.
            pub const EMPTY: Self = $layout { $($field: 0,)* };

            /// Bytes of all regions, each rounded up to 64 bytes, from a
            /// 64-byte boundary.
            pub const fn bytes(&self) -> usize {
                0 $(+ $crate::arena::region(self.$field * core::mem::size_of::<$ty>()))*
            }
        }

        pub(crate) struct $mem<'a> {
            $($field: &'a mut [$ty],)*
        }

        impl<'a> $mem<'a> {
            /// The regions, zeroed, from the first 64-byte boundary of
            /// `buf`; `None` when they do not all fit.
            pub(crate) fn carve(layout: &$layout, buf: &'a mut [u8]) -> Option<Self> {
                let mut carver = $crate::arena::Carver::new(buf)?;
                let mem = $mem { $($field: carver.take(layout.$field),)* };
                if carver.fits() {
                    Some(mem)
                } else {
                    None
                }
            }

            /// Whether every region has the length `layout` gives it.
            #[cfg(test)]
            pub(crate) fn matches(&self, layout: &$layout) -> bool {
                true $(&& self.$field.len() == layout.$field)*
            }
        }
    };
}

pub(crate) use arena_layout;

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use kilobyte_format::BlockQ8;
    use std::vec;

    arena_layout! {
        /// Odd sizes of every element type the sessions use.
        pub struct TestLayout, TestMem {
            bytes: u8,
            floats: f32,
            blocks: BlockQ8,
            halves: half::bf16,
            none: i8,
        }
    }

    const LAYOUT: TestLayout = TestLayout {
        bytes: 1,
        floats: 17,
        blocks: 3,
        halves: 40,
        none: 0,
    };

    /// From any start, the regions are aligned, zeroed and as long as the
    /// layout says, and take exactly `bytes()` after the first boundary.
    #[test]
    fn carving_takes_exactly_the_layout_from_any_start() {
        let n = LAYOUT.bytes();
        assert_eq!(n, 64 + 128 + 128 + 128);
        let mut buf = vec![0xffu8; n + 2 * ARENA_ALIGN];
        for off in 0..ARENA_ALIGN {
            let skip = buf[off..].as_ptr().align_offset(ARENA_ALIGN);
            let exact = &mut buf[off..off + skip + n];
            exact.fill(0xff);
            let mem = TestMem::carve(&LAYOUT, exact).unwrap();
            assert!(mem.matches(&LAYOUT));
            assert_eq!(mem.floats.as_ptr() as usize % ARENA_ALIGN, 0);
            assert_eq!(mem.blocks.as_ptr() as usize % ARENA_ALIGN, 0);
            assert!(mem.floats.iter().all(|&v| v == 0.0));
            assert!(mem.blocks.iter().all(|b| b.qs == [0; 32] && b.d == [0; 2]));
            assert!(TestMem::carve(&LAYOUT, &mut buf[off..off + skip + n - 1]).is_none());
        }
    }

    /// Counts no buffer can hold are refused, never a panic.
    #[test]
    fn impossible_layouts_are_refused() {
        let mut buf = vec![0u8; 4096];
        for huge in [usize::MAX, usize::MAX / 4, usize::MAX / 64 + 1] {
            let layout = TestLayout {
                floats: huge,
                ..LAYOUT
            };
            assert!(TestMem::carve(&layout, &mut buf).is_none());
        }
        assert!(TestMem::carve(&LAYOUT, &mut buf[..10]).is_none());
        assert_eq!(TestLayout::EMPTY.bytes(), 0);
    }

    #[test]
    fn a_static_arena_is_handed_out_once() {
        static ARENA: StaticArena<100> = StaticArena::new();
        let arena = ARENA.take().unwrap();
        assert_eq!(arena.bytes_mut().as_ptr() as usize % ARENA_ALIGN, 0);
        arena.bytes_mut()[99] = 1;
        assert!(ARENA.take().is_none());
        assert!(ARENA.take().is_none());
    }
}
