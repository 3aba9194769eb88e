//! How the process holds memory. vacate runs mimalloc as its global allocator (the binary's
//! `main.rs`); two of mimalloc's defaults suit a long-running program that is idle most of
//! the time badly, so [`configure`] changes them at start-up:
//!
//! * Transparent huge pages. mimalloc asks the kernel for huge pages on its arenas
//!   (`madvise(MADV_HUGEPAGE)`), and on a host where THP is `always` the kernel gives them
//!   unasked: a 2 MiB page stays resident while one small object in it is live. vacate turns
//!   THP off for itself (`prctl(PR_SET_THP_DISABLE)`), as mimalloc does with its option
//!   `allow_thp=0` (which it only reads before `main`).
//! * Delayed purging. Memory freed by a thread goes back to the system only after
//!   `purge_delay` (1 s), and only when that thread allocates or frees again: the memory of
//!   the caches' first lists stays in an idle daemon. vacate purges at once.
//!
//! Measured side by side on a 200-node testbed (docs/benchmarks.md, "Allocator settings"):
//! idle resident memory 62 to 96 MB with mimalloc's defaults, 29 to 33 MB with both
//! changes, about 17 MB of it the mapped executable (built with Cargo's default release
//! profile then; about 11.5 MB with the size-optimised profile of `Cargo.toml`: "Release
//! profile" in the same document).

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h`, which libmimalloc-sys does not
/// name (checked by a test against its default).
const PURGE_DELAY: mi_option_t = 15;

/// Applies the settings above; call first thing in `main`. A kernel that cannot turn THP
/// off (before Linux 3.15) changes nothing but memory use: the error is for a log line.
pub fn configure() -> std::io::Result<()> {
    // SAFETY: `mi_option_set` takes any option number and value; `PURGE_DELAY` is the purge
    // delay (see the test below), and 0 is one of its documented values.
    unsafe { mi_option_set(PURGE_DELAY, 0) };
    // SAFETY: PR_SET_THP_DISABLE takes its flag in the second argument and zeros after it;
    // it changes only whether this process's pages may be huge.
    let disabled = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if disabled != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// mimalloc's purge delay now, in milliseconds.
pub fn purge_delay() -> std::ffi::c_long {
    // SAFETY: reading an option has no preconditions.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: it starts at mimalloc's default of 1000 ms (or what
    /// `MIMALLOC_PURGE_DELAY` says), and [`configure`] sets it to 0 and THP off.
    #[test]
    fn configure_purges_at_once_without_huge_pages() {
        let default = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        assert_eq!(purge_delay(), default, "option 15 is not the purge delay");
        configure().expect("THP turned off");
        assert_eq!(purge_delay(), 0);
        // SAFETY: as in `configure`.
        let thp_disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(thp_disabled, 1);
    }
}
