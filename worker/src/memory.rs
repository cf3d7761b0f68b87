//! Memory accounting for the per-task memory budget.
//!
//! Rhai's own limits (string, array and map sizes) do not bound memory: a
//! script can fill a map through index assignment (`m[k] = big`), which Rhai
//! does not check, or hold many values each under the limits. So every heap
//! allocation of the process goes through a counting allocator (the `cap`
//! crate over the system allocator), and the engine's progress callback —
//! called between every two Rhai operations — compares what is allocated now
//! with what was allocated when the task started. A script over its budget
//! is stopped there, its values are dropped, and the worker serves the next
//! task.
//!
//! The allocator also carries a hard ceiling ([`set_hard_limit`]) above the
//! budget: an allocation that would cross it fails, and Rust aborts the
//! process — the worker restarts and the task in hand ends as an error. That
//! only happens if a single operation jumps past the budget by more than the
//! headroom; the OS limits of the service units are the last line beyond it.

use std::alloc::System;

use cap::Cap;

/// Every allocation of a process linking this crate is counted here.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Bytes currently allocated on the heap by this process.
pub fn allocated() -> usize {
    ALLOCATOR.allocated()
}

/// Makes allocations fail (and the process abort) once `bytes` are in use.
/// `None` removes the ceiling.
pub fn set_hard_limit(bytes: Option<usize>) {
    let limit = bytes.map_or(usize::MAX, |b| b.max(allocated()));
    // Fails only when the limit is below what is allocated, which `max`
    // rules out (allocation in between is tolerated: the next call fixes it).
    let _ = ALLOCATOR.set_limit(limit);
}

/// Hands freed memory back to the operating system. glibc keeps freed heap
/// pages for reuse; after a task that used a lot, that would leave the
/// worker's RSS at its peak for good.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only returns unused pages of the allocator's own
    // heap to the kernel; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One malloc arena for the whole process (glibc). By default each thread
/// that allocates gets an arena of its own — a 128 MiB reservation grown by
/// `mprotect` calls — but the worker's threads take turns (the script
/// thread works, the heartbeat thread wakes every few seconds), so extra
/// arenas buy no parallelism, only start-up system calls and memory.
pub fn use_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a tuning parameter of the allocator; it is
    // called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
