//! Just enough of rtnetlink (Linux `rtnetlink(7)`, `linux/netlink.h` and
//! `linux/rtnetlink.h`; the wire format is RFC 3549's) to tell that an interface address
//! was added or removed or a link changed: the multicast notifications an
//! [`InterfaceWatcher`](super::InterfaceWatcher) subscribes to.
//!
//! ```text
//! nlmsghdr   len u32 | type u16 | flags u16 | seq u32 | pid u32          (16 bytes, host order)
//! ifaddrmsg  family u8 | prefixlen u8 | flags u8 | scope u8 | index u32  (RTM_NEWADDR / RTM_DELADDR)
//! ifinfomsg  family u8 | pad u8 | type u16 | index i32 | flags u32 | change u32  (RTM_NEWLINK / RTM_DELLINK)
//! rtattr     len u16 | type u16 | value…                                 (each padded to 4 bytes)
//! ```
//!
//! Parsing is pure, bounded and total — it is here rather than in the watcher so it runs
//! (and is tested) on every platform: [`parse`] walks one received buffer, reads no byte
//! outside it, and yields at most one event per message header; anything malformed ends
//! the walk with a [`NetlinkError`] (the events before it are kept). Message kinds other
//! than the five below are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// Length of `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
/// Length of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// Length of `struct rtattr`'s header.
const RTATTR_LEN: usize = 4;

/// `NLMSG_OVERRUN`: the kernel dropped notifications (data lost).
const NLMSG_OVERRUN: u16 = 4;
/// `RTM_NEWLINK`, `RTM_DELLINK`, `RTM_NEWADDR`, `RTM_DELADDR` (`linux/rtnetlink.h`).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// `IFA_ADDRESS`, `IFA_LOCAL` (`linux/if_addr.h`): on point-to-point links the local
/// address is `IFA_LOCAL`, `IFA_ADDRESS` the peer's; elsewhere both are the same.
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `AF_INET`, `AF_INET6` as Linux numbers them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `IFF_UP` (`linux/if.h`).
const IFF_UP: u32 = 0x1;

/// One notification that matters for a host's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetlinkEvent {
    /// An address was added to interface `index` (`RTM_NEWADDR`).
    AddressAdded {
        /// The interface index.
        index: u32,
        /// The address, if the message carried one of a known family.
        addr: Option<IpAddr>,
    },
    /// An address was removed from interface `index` (`RTM_DELADDR`).
    AddressRemoved {
        /// The interface index.
        index: u32,
        /// The address, if the message carried one of a known family.
        addr: Option<IpAddr>,
    },
    /// Interface `index` appeared or changed state (`RTM_NEWLINK`).
    LinkChanged {
        /// The interface index.
        index: u32,
        /// Whether it is administratively up (`IFF_UP`).
        up: bool,
    },
    /// Interface `index` went away (`RTM_DELLINK`).
    LinkRemoved {
        /// The interface index.
        index: u32,
    },
    /// The kernel dropped notifications: anything may have changed (`NLMSG_OVERRUN`).
    Overrun,
}

/// Why a buffer is not a well-formed sequence of netlink messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// A message header says it is shorter than a header, or longer than what is left.
    #[error("netlink message at offset {offset} declares {len} bytes, {left} left")]
    BadLength {
        /// Where the message starts.
        offset: usize,
        /// Its declared length.
        len: usize,
        /// Bytes left in the buffer from there.
        left: usize,
    },
    /// An address or link message too short for its fixed part.
    #[error("netlink message of type {kind} too short for its body ({len} bytes)")]
    ShortBody {
        /// The message type.
        kind: u16,
        /// Its body length.
        len: usize,
    },
    /// Bytes after the last message that are not a whole header.
    #[error("{0} trailing bytes after the last netlink message")]
    Trailing(usize),
}

/// The events in one buffer received from a NETLINK_ROUTE socket, in order (see the
/// module docs for the bounds).
pub fn parse(buf: &[u8]) -> Result<Vec<NetlinkEvent>, NetlinkError> {
    let mut events = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let left = buf.len() - offset;
        if left < HEADER_LEN {
            return Err(NetlinkError::Trailing(left));
        }
        let rest = &buf[offset..];
        let len = usize::try_from(u32_at(rest, 0)).unwrap_or(usize::MAX);
        if len < HEADER_LEN || len > left {
            return Err(NetlinkError::BadLength { offset, len, left });
        }
        let kind = u16_at(rest, 4);
        if let Some(event) = event(kind, &rest[HEADER_LEN..len])? {
            events.push(event);
        }
        // NLMSG_ALIGN: the next header starts at a multiple of 4 (or the buffer ends).
        offset = offset.saturating_add(align4(len)).min(buf.len());
    }
    Ok(events)
}

fn event(kind: u16, body: &[u8]) -> Result<Option<NetlinkEvent>, NetlinkError> {
    let short = || NetlinkError::ShortBody { kind, len: body.len() };
    Ok(Some(match kind {
        RTM_NEWADDR | RTM_DELADDR => {
            if body.len() < IFADDRMSG_LEN {
                return Err(short());
            }
            let (family, index) = (body[0], u32_at(body, 4));
            let addr = address(family, &body[IFADDRMSG_LEN..]);
            if kind == RTM_NEWADDR {
                NetlinkEvent::AddressAdded { index, addr }
            } else {
                NetlinkEvent::AddressRemoved { index, addr }
            }
        }
        RTM_NEWLINK | RTM_DELLINK => {
            if body.len() < IFINFOMSG_LEN {
                return Err(short());
            }
            let index = u32_at(body, 4);
            if kind == RTM_NEWLINK {
                NetlinkEvent::LinkChanged { index, up: u32_at(body, 8) & IFF_UP != 0 }
            } else {
                NetlinkEvent::LinkRemoved { index }
            }
        }
        NLMSG_OVERRUN => NetlinkEvent::Overrun,
        _ => return Ok(None),
    }))
}

/// The address in an address message's attributes: `IFA_LOCAL` if present, else
/// `IFA_ADDRESS`. Attributes that do not fit are the end of the list.
fn address(family: u8, mut attrs: &[u8]) -> Option<IpAddr> {
    let (mut local, mut address) = (None, None);
    while attrs.len() >= RTATTR_LEN {
        let len = usize::from(u16_at(attrs, 0));
        if len < RTATTR_LEN || len > attrs.len() {
            break;
        }
        let value = &attrs[RTATTR_LEN..len];
        let ip = match (family, value.len()) {
            (AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(value[0], value[1], value[2], value[3]))),
            (AF_INET6, 16) => <[u8; 16]>::try_from(value).ok().map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        };
        match u16_at(attrs, 2) {
            IFA_LOCAL => local = local.or(ip),
            IFA_ADDRESS => address = address.or(ip),
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    local.or(address)
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// A host-order `u16` at `at`; the callers have checked the length.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// A host-order `u32` at `at`; the callers have checked the length.
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header(kind: u16, body_len: usize) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&u32::try_from(HEADER_LEN + body_len).unwrap().to_ne_bytes());
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&[0; 10]); // flags, seq, pid
        h
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(RTATTR_LEN + value.len()).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align4(a.len()), 0);
        a
    }

    /// An address message as the kernel sends it: header, ifaddrmsg, attributes.
    fn addr_msg(kind: u16, family: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, 24, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        for a in attrs {
            body.extend_from_slice(a);
        }
        let mut m = header(kind, body.len());
        m.extend_from_slice(&body);
        m
    }

    fn link_msg(kind: u16, index: u32, flags: u32) -> Vec<u8> {
        let mut body = vec![0, 0, 1, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&flags.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend_from_slice(&attr(3, b"eth0\0")); // IFLA_IFNAME, ignored
        let mut m = header(kind, body.len());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn address_added_and_removed() {
        let v4 = addr_msg(RTM_NEWADDR, AF_INET, 3, &[attr(IFA_ADDRESS, &[10, 1, 2, 3]), attr(8, &[0; 4])]);
        assert_eq!(
            parse(&v4).unwrap(),
            vec![NetlinkEvent::AddressAdded { index: 3, addr: Some("10.1.2.3".parse().unwrap()) }]
        );
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let del = addr_msg(RTM_DELADDR, AF_INET6, 9, &[attr(IFA_ADDRESS, &v6.octets())]);
        assert_eq!(
            parse(&del).unwrap(),
            vec![NetlinkEvent::AddressRemoved { index: 9, addr: Some(v6.into()) }]
        );
    }

    #[test]
    fn the_local_address_of_a_point_to_point_link_wins() {
        let m = addr_msg(
            RTM_NEWADDR,
            AF_INET,
            4,
            &[attr(IFA_ADDRESS, &[192, 0, 2, 1]), attr(IFA_LOCAL, &[192, 0, 2, 2])],
        );
        assert_eq!(
            parse(&m).unwrap(),
            vec![NetlinkEvent::AddressAdded { index: 4, addr: Some("192.0.2.2".parse().unwrap()) }]
        );
    }

    #[test]
    fn several_messages_in_one_buffer_and_links() {
        let mut buf = link_msg(RTM_NEWLINK, 2, IFF_UP);
        buf.extend(link_msg(RTM_NEWLINK, 2, 0));
        buf.extend(header(3, 4)); // NLMSG_DONE with its error code: skipped
        buf.extend_from_slice(&[0; 4]);
        buf.extend(link_msg(RTM_DELLINK, 2, 0));
        buf.extend(header(NLMSG_OVERRUN, 0));
        buf.extend(header(24, 0)); // RTM_NEWROUTE: not subscribed, skipped
        assert_eq!(
            parse(&buf).unwrap(),
            vec![
                NetlinkEvent::LinkChanged { index: 2, up: true },
                NetlinkEvent::LinkChanged { index: 2, up: false },
                NetlinkEvent::LinkRemoved { index: 2 },
                NetlinkEvent::Overrun,
            ]
        );
    }

    #[test]
    fn unknown_families_and_bad_attributes_give_no_address() {
        // An address of family 7, an attribute of the wrong length, one that overruns.
        let odd = addr_msg(RTM_NEWADDR, 7, 1, &[attr(IFA_ADDRESS, &[1, 2, 3, 4])]);
        let short = addr_msg(RTM_NEWADDR, AF_INET, 1, &[attr(IFA_ADDRESS, &[1, 2, 3])]);
        let mut overrun = addr_msg(RTM_NEWADDR, AF_INET, 1, &[attr(IFA_ADDRESS, &[1, 2, 3, 4])]);
        overrun[HEADER_LEN + IFADDRMSG_LEN] = 200; // rta_len beyond the message
        for m in [odd, short, overrun] {
            assert_eq!(parse(&m).unwrap(), vec![NetlinkEvent::AddressAdded { index: 1, addr: None }]);
        }
    }

    #[test]
    fn malformed_buffers_are_errors() {
        assert_eq!(parse(&[]).unwrap(), vec![]);
        assert_eq!(parse(&[1, 2, 3]), Err(NetlinkError::Trailing(3)));
        let mut too_long = header(RTM_NEWADDR, 8);
        too_long.extend_from_slice(&[0; 4]);
        assert!(matches!(parse(&too_long), Err(NetlinkError::BadLength { len: 24, left: 20, .. })));
        let mut zero = header(RTM_NEWADDR, 0);
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(parse(&zero), Err(NetlinkError::BadLength { len: 0, .. })));
        let short_body = header(RTM_NEWLINK, 0);
        assert_eq!(parse(&short_body), Err(NetlinkError::ShortBody { kind: RTM_NEWLINK, len: 0 }));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(events) = parse(&b) {
                prop_assert!(events.len() <= b.len() / HEADER_LEN);
            }
        }

        #[test]
        fn truncated_messages_never_panic(cut in 0usize..64) {
            let m = addr_msg(RTM_NEWADDR, AF_INET6, 5, &[attr(IFA_ADDRESS, &[0x20; 16]), attr(IFA_LOCAL, &[0x20; 16])]);
            let _ = parse(&m[..cut.min(m.len())]);
        }
    }
}
