//! Sleeping until an exact time: a timerfd (the kernel's high-resolution timers)
//! registered with the tokio reactor.
//!
//! Tokio's timer wheel rounds every deadline up to the next millisecond. A
//! publisher at 1,000 publishes/s then sent each publish up to a millisecond late,
//! and since latency is measured from the *scheduled* time, all of that lateness
//! was counted against the server.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::{unix::AsyncFd, Interest};

/// A one-shot timer on the wall clock ([`crate::client::now_ns`]'s clock).
pub struct PreciseTimer {
    fd: AsyncFd<Fd>,
    /// The expiry the timer is armed for, so waiting again for it costs no syscall.
    armed_ns: u64,
}

/// The timerfd, as the reactor takes it.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    /// A new, unarmed timer on the current tokio runtime.
    pub fn new() -> io::Result<PreciseTimer> {
        let timer = TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `Fd` owns the timerfd, which stays open, and is the same file
        // descriptor, until the `AsyncFd` (and with it the `Fd`) is dropped.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(Fd(timer), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PreciseTimer { fd, armed_ns: 0 })
    }

    /// Returns at `at_ns` (ns since the Unix epoch), or at once if that has passed.
    /// Cancel-safe: a wait for the same time keeps the armed timer (no syscall), and
    /// arming it for another time discards an expiry nobody read.
    pub async fn sleep_until_ns(&mut self, at_ns: u64) -> io::Result<()> {
        // A zero expiry would disarm the timer; the epoch is long past anyway.
        let at_ns = at_ns.max(1);
        if at_ns != self.armed_ns {
            let at = TimeSpec::from_duration(Duration::from_nanos(at_ns));
            self.fd.get_ref().0.set(
                Expiration::OneShot(at),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )?;
            self.armed_ns = at_ns;
        }
        loop {
            let mut ready = self.fd.readable().await?;
            // `wait` reads the expiry count; on the non-blocking fd a timer that has
            // not fired yet answers EAGAIN, which clears the readiness.
            if let Ok(result) = ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                // Fired (or failed): the next wait arms it again.
                self.armed_ns = 0;
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::now_ns;

    #[tokio::test]
    async fn wakes_at_the_deadline_never_before_it() {
        let mut timer = PreciseTimer::new().unwrap();
        let mut lateness = Vec::new();
        for _ in 0..50 {
            let at = now_ns() + 300_000;
            timer.sleep_until_ns(at).await.unwrap();
            let now = now_ns();
            assert!(now >= at, "woke {} ns early", at - now);
            lateness.push(now - at);
        }
        lateness.sort_unstable();
        // How late depends on the machine's load, so it is reported, not asserted.
        eprintln!(
            "timer lateness: median {} ns, worst {} ns",
            lateness[25], lateness[49]
        );
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_returns_at_once() {
        let mut timer = PreciseTimer::new().unwrap();
        timer.sleep_until_ns(now_ns() - 1_000_000).await.unwrap();
    }
}
