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
/// when it is filled: some system time, measured in docs/BENCHMARKS.md),
/// which is why chunk buffers are reused (`chapar_store::ChunkBuffers`).
///
/// It also keeps up to 2 MiB free at the top of each heap rather than
/// giving it back at once (glibc's default is 128 KiB). The transport's
/// small buffers (Noise and Yamux frames, 64 KiB and less) come and go at
/// the top of the heap many times a second; a relay receiving 320 MiB
/// took about 65 000 page faults re-mapping them, against 4 000–6 000
/// with this (18 000 in all, start-up included). The heap is limited to
/// one, so what it keeps stays bounded: with 4 MiB and no limit, peak RSS
/// in `scripts/bench-send.sh 1024` reached 47.5–50.4 MiB, and with two
/// heaps a relay passing 4 GiB reached 48.3; with this, 42.0–45.4 MiB at
/// 1 and 4 GiB.
#[allow(unsafe_code)]
pub fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before
    // other threads exist, with a parameter and value glibc documents.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Heaps at most (glibc's default is 8 per core): each keeps up to
/// `TRIM_THRESHOLD` free, and a node runs many short-lived blocking
/// threads (store calls), each of which would otherwise get its own. One
/// heap for the process: on 2 cores, sharing its lock cost nothing
/// measurable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 1;

/// Free memory kept at the top of a heap before it is given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 2 * 1024 * 1024;

/// Blocks from this size up are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
