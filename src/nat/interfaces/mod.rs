//! The host's interface addresses: the source of host candidates for a socket bound to a
//! wildcard address, and the signal of a network change.
//!
//! * [`interface_ips`] lists them (`if-addrs`);
//! * [`InterfaceWatcher`] wakes up when they may have changed: on Linux from the kernel's
//!   rtnetlink notifications ([`netlink`] decodes just enough of them), elsewhere by
//!   polling every [`FALLBACK_POLL`].
//!
//! ```no_run
//! # async fn f() {
//! use kizuna::nat::interfaces::{interface_ips, InterfaceWatcher};
//! let mut watcher = InterfaceWatcher::new();
//! let mut seen = interface_ips();
//! loop {
//!     watcher.changed().await;
//!     let now = interface_ips();
//!     if now != seen {
//!         println!("network changed: {seen:?} -> {now:?}");
//!         seen = now;
//!     }
//! }
//! # }
//! ```

pub mod netlink;
mod watcher;

use std::net::IpAddr;

use if_addrs::IfOperStatus;

pub use watcher::{InterfaceWatcher, WatchMode, DEBOUNCE, FALLBACK_POLL};

/// The addresses of the host's interfaces that are not down, sorted, without loopback,
/// IPv4 link-local and IPv6 link-local addresses (never reachable from a peer elsewhere).
/// Empty if the system will not list them.
pub fn interface_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(list) => list
            .into_iter()
            .filter(|i| !matches!(i.oper_status, IfOperStatus::Down | IfOperStatus::NotPresent))
            .map(|i| i.ip())
            .filter(|ip| is_global_candidate(*ip))
            .collect(),
        Err(e) => {
            tracing::debug!("cannot list interface addresses: {e}");
            Vec::new()
        }
    };
    ips.sort();
    ips.dedup();
    ips
}

/// Whether `ip` may be offered to a peer as a host candidate address.
pub fn is_global_candidate(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80),
    }
}
