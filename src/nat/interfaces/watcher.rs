//! [`InterfaceWatcher`]: wakes up when the host's interface addresses may have changed —
//! from the kernel's notifications where it can, by polling elsewhere.
//!
//! On Linux it opens a `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK`,
//! `RTMGRP_IPV4_IFADDR` and `RTMGRP_IPV6_IFADDR` (`rtnetlink(7)`) and reads it through
//! tokio's [`AsyncFd`](tokio::io::unix::AsyncFd): every address added or removed, every
//! link change, and every overrun (the kernel dropped notifications) counts as a change.
//! Messages not sent by the kernel are ignored, and malformed ones count as a change
//! (a spurious wake-up costs one look at the interface list; a missed change costs a
//! punch retry). A burst of notifications — an interface coming up brings its link,
//! its addresses and more within milliseconds — is one change: [`InterfaceWatcher::changed`]
//! resolves [`DEBOUNCE`] after the first notification, having swallowed the rest.
//!
//! Where no netlink socket can be opened (another OS, a sandbox without it), or when
//! reading it fails, the watcher polls: `changed` resolves every [`FALLBACK_POLL`]. In
//! both modes a wake-up only means "look again": callers compare
//! [`interface_ips`](super::interface_ips) with what they saw last.

use std::time::Duration;

/// How long after the first notification of a burst [`InterfaceWatcher::changed`]
/// resolves. 100 ms: the notifications of one configuration step (link up, IPv4 address,
/// IPv6 link-local and DAD) arrive within a few milliseconds of each other; a tenth of a
/// second folds them into one wake-up and is nothing next to a punch attempt.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The polling interval where notifications are unavailable. 5 s: the interval the node
/// used before it watched notifications — listing interfaces is one cheap system call
/// round trip, and a network change is still acted on within seconds.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// How the watcher learns of changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchMode {
    /// Kernel notifications (Linux rtnetlink).
    Netlink,
    /// Polling every given interval.
    Polling(Duration),
}

/// Wakes up when the host's interface addresses may have changed (see the module docs).
#[derive(Debug)]
pub struct InterfaceWatcher {
    source: Source,
    /// Set at the first notification of a burst: when `changed` resolves.
    pending: Option<tokio::time::Instant>,
}

#[derive(Debug)]
enum Source {
    #[cfg(target_os = "linux")]
    Netlink(linux::NetlinkSocket),
    Polling(tokio::time::Interval),
}

impl InterfaceWatcher {
    /// A watcher on kernel notifications where available, else polling every
    /// [`FALLBACK_POLL`]. Must be called within a tokio runtime with I/O and time
    /// enabled.
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        match linux::NetlinkSocket::open() {
            Ok(s) => return Self { source: Source::Netlink(s), pending: None },
            Err(e) => tracing::debug!("no netlink interface notifications ({e}): polling"),
        }
        Self::polling(FALLBACK_POLL)
    }

    /// A watcher that polls: [`changed`](Self::changed) resolves every `every` (at least
    /// 1 ms), the first time `every` from now.
    pub fn polling(every: Duration) -> Self {
        let every = every.max(Duration::from_millis(1));
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { source: Source::Polling(interval), pending: None }
    }

    /// How it learns of changes.
    pub fn mode(&self) -> WatchMode {
        match &self.source {
            #[cfg(target_os = "linux")]
            Source::Netlink(_) => WatchMode::Netlink,
            Source::Polling(i) => WatchMode::Polling(i.period()),
        }
    }

    /// Resolves when the interface addresses may have changed: [`DEBOUNCE`] after the
    /// first kernel notification of a burst, or at the next poll. Cancel-safe: a
    /// notification already seen is not lost if the future is dropped.
    pub async fn changed(&mut self) {
        loop {
            if let Some(at) = self.pending {
                // Swallow the rest of the burst until the debounce ends.
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {
                        self.pending = None;
                        return;
                    }
                    () = self.notification() => {}
                }
                continue;
            }
            self.notification().await;
            match self.source {
                Source::Polling(_) => return,
                #[cfg(target_os = "linux")]
                Source::Netlink(_) => self.pending = Some(tokio::time::Instant::now() + DEBOUNCE),
            }
        }
    }

    /// The next notification (or poll tick). Falls back to polling if the socket fails.
    async fn notification(&mut self) {
        match &mut self.source {
            Source::Polling(interval) => {
                interval.tick().await;
            }
            #[cfg(target_os = "linux")]
            Source::Netlink(socket) => {
                if let Err(e) = socket.next_change().await {
                    tracing::warn!("netlink interface notifications failed ({e}): polling instead");
                    *self = Self::polling(FALLBACK_POLL);
                }
            }
        }
    }
}

impl Default for InterfaceWatcher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        io,
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    use tokio::io::unix::AsyncFd;

    use super::super::netlink::{parse, NetlinkEvent};

    /// Receive buffer. 16 KiB: an address notification is under 100 bytes and a link one
    /// about 1.5 KiB; the kernel sends one notification per datagram, so this never
    /// truncates (a truncated one would still count as a change).
    const BUF_LEN: usize = 16 * 1024;

    /// The multicast groups: links, IPv4 and IPv6 addresses.
    const GROUPS: u32 = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

    /// A non-blocking NETLINK_ROUTE socket bound to [`GROUPS`].
    #[derive(Debug)]
    pub(super) struct NetlinkSocket {
        fd: AsyncFd<OwnedFd>,
        buf: Vec<u8>,
    }

    impl NetlinkSocket {
        pub(super) fn open() -> io::Result<Self> {
            // SAFETY: socket(2) with constant arguments; the result is checked before use.
            let raw = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_nl is plain data, valid when zeroed (pid 0: the kernel
            // assigns one).
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = GROUPS;
            let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes for the call's duration.
            let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a valid, owned descriptor that `AsyncFd` takes ownership of;
            // nothing else closes or replaces it while registered.
            let fd = unsafe { AsyncFd::register(fd)? };
            Ok(Self { fd, buf: vec![0; BUF_LEN] })
        }

        /// Waits for a notification that may change the host's addresses. An overrun
        /// (ENOBUFS: the kernel dropped some) counts as one; other errors are returned.
        pub(super) async fn next_change(&mut self) -> io::Result<()> {
            loop {
                let mut guard = self.fd.readable().await?;
                let buf = &mut self.buf;
                match guard.try_io(|fd| recv_from_kernel(fd.get_ref(), buf)) {
                    Ok(Ok(Some(n))) => {
                        if relevant(&self.buf[..n]) {
                            return Ok(());
                        }
                    }
                    Ok(Ok(None)) => {} // not from the kernel
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {}
                }
            }
        }
    }

    /// Whether a received buffer may mean changed addresses: any address or link event,
    /// an overrun, or something unparseable.
    fn relevant(buf: &[u8]) -> bool {
        match parse(buf) {
            Ok(events) => events.iter().any(|e| {
                matches!(
                    e,
                    NetlinkEvent::AddressAdded { .. }
                        | NetlinkEvent::AddressRemoved { .. }
                        | NetlinkEvent::LinkChanged { .. }
                        | NetlinkEvent::LinkRemoved { .. }
                        | NetlinkEvent::Overrun
                )
            }),
            Err(e) => {
                tracing::debug!("malformed netlink notification ({e}): taken as a change");
                true
            }
        }
    }

    /// One datagram into `buf`: `Some(len)` if the kernel (port id 0) sent it, `None` if
    /// another process did.
    fn recv_from_kernel(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: as in `open`.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is valid for `buf.len()` writable bytes and `from` for `from_len`,
        // for the call's duration.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::addr_of_mut!(from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0).min(buf.len());
        Ok((from.nl_pid == 0).then_some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polling_wakes_at_every_interval() {
        let mut w = InterfaceWatcher::polling(Duration::from_millis(30));
        assert_eq!(w.mode(), WatchMode::Polling(Duration::from_millis(30)));
        let start = tokio::time::Instant::now();
        w.changed().await;
        w.changed().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn linux_watches_netlink() {
        // Opening the socket needs no privilege; the namespace test (tests/
        // interface_watcher.rs) checks that it wakes on real changes.
        assert_eq!(InterfaceWatcher::new().mode(), WatchMode::Netlink);
    }
}
