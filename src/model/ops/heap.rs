//! The process's heap policy for the model's activations.
//!
//! Every op returns a fresh buffer (a forward of 8 × 64 tokens allocates and frees a few hundred MB), and
//! glibc's defaults hand large freed blocks straight back to the kernel (`munmap`, heap trimming), so the
//! next pass pays page faults and page zeroing again: 10–15% of a training step's time in `perf`. Raising
//! the thresholds keeps freed memory in the process for reuse; `skillgraft` sets them once at start-up.

/// Blocks up to 32 MiB (glibc's maximum) come from the heap rather than `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Up to 512 MiB of free memory at the top of the heap stays in the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 512 << 20;
/// Each time the heap grows it grows by 64 MiB more than asked.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 64 << 20;

/// Keeps freed activation buffers in the process (glibc's `mallopt`); returns whether the settings were
/// applied (false on other C libraries, where it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
