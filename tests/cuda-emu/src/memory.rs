//! Device memory. A device pointer is a host address; each allocation is a
//! mapping of its own, between two `PROT_NONE` pages, that ends exactly
//! where the upper one begins, so a kernel that reads or writes past the
//! end faults at once (the scheduler turns that into
//! `CUDA_ERROR_ILLEGAL_ADDRESS`). The bytes between the lower guard page and
//! the start (less than a page) are a canary: a write there is reported
//! when the allocation is freed. New memory is filled with 0xff bytes (NaN
//! as f32 and f64), as a GPU's is not zeroed, so reading memory nobody
//! wrote, or reading before the start, shows as NaN.
//!
//! It owns the allocation table and the range checks the copies and the
//! products make; it does not know about kernels or handles.

use crate::status::{self, CUresult};
use std::collections::BTreeMap;

/// The emulated device's memory size: allocations beyond it fail with
/// `CUDA_ERROR_OUT_OF_MEMORY`, as on a GPU.
pub const TOTAL_BYTES: usize = 8 << 30;

struct Mapping {
    base: usize,
    len: usize,
    size: usize,
}

#[derive(Default)]
pub struct Memory {
    /// By start address (the device pointer).
    allocs: BTreeMap<usize, Mapping>,
    used: usize,
    /// A write before an allocation's start was found (on free).
    pub canary_broken: bool,
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

impl Memory {
    pub const fn new() -> Self {
        Memory {
            allocs: BTreeMap::new(),
            used: 0,
            canary_broken: false,
        }
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn alloc(&mut self, size: usize) -> Result<usize, CUresult> {
        if size == 0 {
            return Err(status::INVALID_VALUE);
        }
        if size > TOTAL_BYTES - self.used {
            return Err(status::OUT_OF_MEMORY);
        }
        let page = page();
        let body = size.div_ceil(page) * page;
        let len = body + 2 * page;
        // SAFETY: a fresh anonymous mapping; the guard pages are inside it.
        let base = unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if m == libc::MAP_FAILED {
                return Err(status::OUT_OF_MEMORY);
            }
            libc::mprotect(m, page, libc::PROT_NONE);
            libc::mprotect(
                (m as *mut u8).add(page + body) as *mut _,
                page,
                libc::PROT_NONE,
            );
            m as usize
        };
        // The start keeps the natural alignment of the element size, since
        // `size` is a whole number of elements.
        let start = base + page + body - size;
        // SAFETY: the canary and the allocation fill the writable part.
        unsafe { std::ptr::write_bytes((base + page) as *mut u8, 0xff, body) };
        self.allocs.insert(start, Mapping { base, len, size });
        self.used += size;
        Ok(start)
    }

    /// Frees the allocation that starts at `ptr` (the driver accepts only
    /// the pointer it returned).
    pub fn free(&mut self, ptr: usize) -> Result<(), CUresult> {
        let m = self.allocs.remove(&ptr).ok_or(status::INVALID_VALUE)?;
        self.used -= m.size;
        let canary_start = m.base + page();
        // SAFETY: the canary bytes are inside the (still mapped) mapping.
        let canary =
            unsafe { std::slice::from_raw_parts(canary_start as *const u8, ptr - canary_start) };
        if let Some(at) = canary.iter().rposition(|&b| b != 0xff) {
            crate::report(&format!(
                "freeing a {}-byte allocation at {ptr:#x}: something wrote {} bytes before its \
                 start",
                m.size,
                canary.len() - at
            ));
            self.canary_broken = true;
        }
        // SAFETY: the mapping was made by `alloc` and is no longer listed.
        unsafe { libc::munmap(m.base as *mut _, m.len) };
        Ok(())
    }

    /// The allocation holding `ptr`: its start and size.
    pub fn find(&self, ptr: usize) -> Option<(usize, usize)> {
        let (&start, m) = self.allocs.range(..=ptr).next_back()?;
        (ptr < start + m.size).then_some((start, m.size))
    }

    /// Whether `[ptr, ptr + bytes)` lies inside one allocation.
    pub fn contains(&self, ptr: usize, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        match self.find(ptr) {
            Some((start, size)) => ptr
                .checked_add(bytes)
                .is_some_and(|end| end <= start + size),
            None => false,
        }
    }

    /// Where `addr` is relative to the allocations, for a fault message.
    pub fn describe(&self, addr: usize) -> String {
        if let Some((&start, m)) = self.allocs.range(..=addr).next_back() {
            let end = start + m.size;
            if addr >= end && addr < m.base + m.len {
                return format!(
                    "{} bytes past the end of a {}-byte allocation at {start:#x}",
                    addr - end,
                    m.size
                );
            }
            if addr < end {
                return format!("inside a {}-byte allocation at {start:#x}", m.size);
            }
        }
        if let Some((&start, m)) = self.allocs.range(addr..).next() {
            if addr >= m.base {
                return format!(
                    "{} bytes before a {}-byte allocation at {start:#x}",
                    start - addr,
                    m.size
                );
            }
        }
        "outside every allocation".into()
    }
}
