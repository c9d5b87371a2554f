//! Scheduling hints for the engine's latency-sensitive threads.
//!
//! A pipeline's driver and the receivers' threads do little work each time
//! they wake (cut a batch, hand tasks out, read a socket), but they wake
//! often, and on cores kept busy by plugin code (the workers, or another
//! program) Linux's EEVDF scheduler lets the running thread finish its
//! slice first: milliseconds per wake-up, several times per batch. Linux
//! 6.12 and later let a thread ask for a shorter slice, which makes it
//! eligible sooner after it wakes (measured here with a looping neighbour
//! on both workers: a healthy word count's batch time next to it went from
//! ~4-5x to ~2-3x its time alone). Older kernels refuse the request, and the
//! threads keep the default.

/// Slice a latency-sensitive thread asks for.
const SHORT_SLICE_NANOS: u64 = 100_000;

/// Asks the scheduler for a short slice for the calling thread (best
/// effort: nothing happens where the kernel does not support it).
pub(super) fn request_short_slice() {
    #[cfg(target_os = "linux")]
    {
        /// `struct sched_attr` of `sched_setattr(2)` (its first 48 bytes:
        /// the kernel takes the size from `size`).
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            policy: u32,
            flags: u64,
            nice: i32,
            priority: u32,
            runtime: u64,
            deadline: u64,
            period: u64,
        }
        // SAFETY: getpriority(2) has no memory preconditions; on Linux,
        // PRIO_PROCESS with a thread id reads that thread's nice value.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            // Keep the thread's nice value (sched_setattr sets it too).
            nice,
            priority: 0,
            // For SCHED_OTHER, the requested slice.
            runtime: SHORT_SLICE_NANOS,
            deadline: 0,
            period: 0,
        };
        // SAFETY: `attr` is a valid, fully initialised `sched_attr` of the
        // size it declares, alive for the call; pid 0 is the calling thread;
        // the kernel only reads it.
        let status = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
        if status != 0 {
            tracing::debug!(
                "the scheduler keeps its default slice for this thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
