//! How the process allocates chunk buffers.

/// Keeps large buffers (chunks in flight, 64 KiB to 16 MiB) out of
/// malloc's heaps, so the memory they use goes back to the system when
/// they are freed. Call once, first thing in `main`.
///
/// **Why.** glibc raises its mmap threshold to the size of the largest
/// block freed so far (up to 32 MiB): after the first chunk is freed,
/// every chunk buffer comes from per-thread heaps, which glibc gives back
/// only from their top. A relay moving 768 MiB through itself had a live
/// heap of 34 MiB at its peak (heaptrack) but 64 MiB of anonymous RSS,
/// growing with the data moved. A fixed threshold turns that adjustment
/// off; each chunk buffer is then its own mapping (a page fault per page
/// when it is filled: some system time, measured in docs/BENCHMARKS.md).
#[allow(unsafe_code)]
pub fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before
    // other threads exist, with a parameter and value glibc documents.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Blocks from this size up are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
