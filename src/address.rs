//! Addresses: [`Protocol`], [`TransportAddr`], [`PeerAddress`] and its one-line ticket,
//! [`TransportCapabilities`] and [`ConnectionInfo`].
//!
//! Ticket grammar (one line, shell-safe):
//!
//! ```text
//! ticket  = peer-id [ "@" entry *( "," entry ) ]
//! entry   = proto "=" value
//! proto   = "tcp" / "quic" / "ws" / "relay" / "webrtc"
//! value   = HOST:PORT (tcp, quic) / ws-url (ws, relay) / "1" (webrtc)
//! ```
//!
//! Entry order is the peer's preference order (its transport hints). A ticket names dial
//! targets, so an entry with port 0 is refused ([`AddressError::PortZero`]); a
//! [`TransportAddr`] on its own may have port 0 (a listen address: any free port).

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    str::FromStr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::{error::AddressError, identity::PeerId};

/// A transport protocol Kizuna can carry a connection over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Protocol {
    /// TLS 1.3 over TCP.
    Tcp,
    /// QUIC (quinn).
    Quic,
    /// TLS 1.3 over WebSocket (tokio-tungstenite).
    WebSocket,
    /// WebRTC DataChannels.
    WebRtc,
}

impl Protocol {
    /// Every protocol, in Kizuna's default preference order.
    pub const ALL: [Protocol; 4] = [Protocol::Quic, Protocol::Tcp, Protocol::WebSocket, Protocol::WebRtc];

    /// The protocol's short name, as used in tickets and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Quic => "quic",
            Protocol::WebSocket => "ws",
            Protocol::WebRtc => "webrtc",
        }
    }

    /// The capabilities a connection over this protocol has.
    pub fn capabilities(self) -> TransportCapabilities {
        let base = TransportCapabilities {
            reliable: true,
            ordered: true,
            multiplexed: true,
            resumable: false,
            nat_traversal: false,
            max_message_size: crate::wire::MAX_MESSAGE_LEN as u64,
        };
        match self {
            Protocol::Tcp => base,
            Protocol::Quic => TransportCapabilities { resumable: true, nat_traversal: true, ..base },
            Protocol::WebSocket => base,
            // One message is one data channel message: 256 KiB, the SCTP limit of
            // webrtc-rs and what browsers advertise.
            Protocol::WebRtc => TransportCapabilities {
                nat_traversal: true,
                max_message_size: crate::transport::webrtc::MAX_DATA_CHANNEL_MESSAGE as u64,
                ..base
            },
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "quic" => Ok(Protocol::Quic),
            "ws" | "websocket" => Ok(Protocol::WebSocket),
            "webrtc" => Ok(Protocol::WebRtc),
            other => Err(AddressError::UnknownProtocol(other.to_string())),
        }
    }
}

/// One address a peer can be reached at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TransportAddr {
    /// TLS over TCP at this socket address.
    Tcp(SocketAddr),
    /// QUIC at this UDP socket address.
    Quic(SocketAddr),
    /// A direct WebSocket listener (`ws://` or `wss://` URL).
    Ws(String),
    /// Reachable through the relay at this `ws://` / `wss://` URL.
    Relay(String),
    /// Reachable over WebRTC, signaled through an existing Kizuna path.
    WebRtc,
}

impl TransportAddr {
    /// The protocol a connection to this address uses.
    pub fn protocol(&self) -> Protocol {
        match self {
            TransportAddr::Tcp(_) => Protocol::Tcp,
            TransportAddr::Quic(_) => Protocol::Quic,
            TransportAddr::Ws(_) | TransportAddr::Relay(_) => Protocol::WebSocket,
            TransportAddr::WebRtc => Protocol::WebRtc,
        }
    }

    /// The socket address, for socket-addressed transports.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            TransportAddr::Tcp(a) | TransportAddr::Quic(a) => Some(*a),
            _ => None,
        }
    }

    /// This listen address as others can dial it: an unspecified IP (`0.0.0.0`, `::`)
    /// becomes loopback of the same family.
    pub fn dialable(&self) -> TransportAddr {
        let fix = |mut s: SocketAddr| {
            if s.ip().is_unspecified() {
                s.set_ip(if s.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            s
        };
        match self {
            TransportAddr::Tcp(s) => TransportAddr::Tcp(fix(*s)),
            TransportAddr::Quic(s) => TransportAddr::Quic(fix(*s)),
            other => other.clone(),
        }
    }

    /// Whether a dialer of this address would connect to port 0 (explicit in a URL).
    fn dials_port_zero(&self) -> bool {
        match self {
            TransportAddr::Tcp(a) | TransportAddr::Quic(a) => a.port() == 0,
            TransportAddr::Ws(u) | TransportAddr::Relay(u) => {
                u.parse::<Uri>().ok().and_then(|u| u.port_u16()) == Some(0)
            }
            TransportAddr::WebRtc => false,
        }
    }

    fn key(&self) -> &'static str {
        match self {
            TransportAddr::Tcp(_) => "tcp",
            TransportAddr::Quic(_) => "quic",
            TransportAddr::Ws(_) => "ws",
            TransportAddr::Relay(_) => "relay",
            TransportAddr::WebRtc => "webrtc",
        }
    }
}

fn check_ws_url(url: &str) -> Result<String, AddressError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| AddressError::BadUrl(url.to_string()))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.contains([',', ' ', '@']) {
        return Err(AddressError::BadUrl(url.to_string()));
    }
    Ok(url.to_string())
}

impl fmt::Display for TransportAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportAddr::Tcp(a) | TransportAddr::Quic(a) => write!(f, "{}={a}", self.key()),
            TransportAddr::Ws(u) | TransportAddr::Relay(u) => write!(f, "{}={u}", self.key()),
            TransportAddr::WebRtc => f.write_str("webrtc=1"),
        }
    }
}

impl FromStr for TransportAddr {
    type Err = AddressError;
    /// Parses `proto=value`, e.g. `tcp=127.0.0.1:4000` or `relay=ws://host:7000`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, value) = s.split_once('=').ok_or_else(|| AddressError::MissingProtocol(s.to_string()))?;
        let sock = |p: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| AddressError::BadSocketAddr { protocol: p.to_string(), addr: value.to_string() })
        };
        match proto {
            "tcp" => Ok(TransportAddr::Tcp(sock("tcp")?)),
            "quic" => Ok(TransportAddr::Quic(sock("quic")?)),
            "ws" => Ok(TransportAddr::Ws(check_ws_url(value)?)),
            "relay" => Ok(TransportAddr::Relay(check_ws_url(value)?)),
            "webrtc" => Ok(TransportAddr::WebRtc),
            other => Err(AddressError::UnknownProtocol(other.to_string())),
        }
    }
}

/// What a transport's connections can do; exchanged in the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransportCapabilities {
    /// Delivery is reliable.
    pub reliable: bool,
    /// Delivery is in order.
    pub ordered: bool,
    /// Many streams can share one connection.
    pub multiplexed: bool,
    /// A connection to a peer seen before can resume (0-RTT).
    pub resumable: bool,
    /// The transport can traverse NATs (hole punching or ICE).
    pub nat_traversal: bool,
    /// Largest single message, in bytes.
    pub max_message_size: u64,
}

/// A peer and everything needed to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// Who the peer is.
    pub peer_id: PeerId,
    /// Where it can be reached, in its order of preference.
    pub addrs: Vec<TransportAddr>,
    /// Protocols the peer prefers, first is best (derived from the address order).
    pub hints: Vec<Protocol>,
    /// Capabilities per protocol the peer offers.
    pub capabilities: BTreeMap<Protocol, TransportCapabilities>,
}

impl PeerAddress {
    /// A peer address with the given addresses; hints and capabilities follow from them.
    pub fn new(peer_id: PeerId, addrs: Vec<TransportAddr>) -> Self {
        let mut hints = Vec::new();
        for a in &addrs {
            if !hints.contains(&a.protocol()) {
                hints.push(a.protocol());
            }
        }
        let capabilities = hints.iter().map(|p| (*p, p.capabilities())).collect();
        Self { peer_id, addrs, hints, capabilities }
    }

    /// The one-line ticket text (same as `Display`).
    pub fn ticket(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_id)?;
        for (i, a) in self.addrs.iter().enumerate() {
            f.write_str(if i == 0 { "@" } else { "," })?;
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl FromStr for PeerAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (id, Some(rest)),
            None => (s, None),
        };
        let peer_id: PeerId = id.parse()?;
        let mut addrs = Vec::new();
        if let Some(rest) = rest {
            for entry in rest.split(',') {
                let addr: TransportAddr = entry.parse()?;
                if addr.dials_port_zero() {
                    return Err(AddressError::PortZero { addr: addr.to_string() });
                }
                addrs.push(addr);
            }
        }
        Ok(Self::new(peer_id, addrs))
    }
}

/// Whether a connection goes straight to the peer or through an intermediary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathKind {
    /// Packets go straight between the two peers.
    Direct,
    /// Packets go through a relay (ciphertext only).
    Relayed,
}

impl PathKind {
    /// `"direct"` or `"relayed"`.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A snapshot of one connection: who, where, how, and how it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The authenticated remote peer.
    pub peer: PeerId,
    /// The local socket address, where there is one.
    pub local_addr: Option<SocketAddr>,
    /// The remote address.
    pub remote_addr: TransportAddr,
    /// The protocol carrying the connection.
    pub protocol: Protocol,
    /// Direct or relayed.
    pub path: PathKind,
    /// When the connection was established.
    pub established_at: SystemTime,
    /// Bytes written to the connection (payload, after framing, before encryption).
    pub bytes_sent: u64,
    /// Bytes read from the connection.
    pub bytes_received: u64,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Estimated bandwidth in bytes per second, once measured.
    pub bandwidth_estimate: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn id() -> PeerId {
        Keypair::from_seed([3; 32]).peer_id()
    }

    #[test]
    fn unspecified_listen_addresses_are_dialed_on_loopback() {
        let d = |s: &str| s.parse::<TransportAddr>().unwrap().dialable().to_string();
        assert_eq!(d("tcp=0.0.0.0:4000"), "tcp=127.0.0.1:4000");
        assert_eq!(d("quic=[::]:4001"), "quic=[::1]:4001");
        assert_eq!(d("quic=198.51.100.7:4001"), "quic=198.51.100.7:4001");
        assert_eq!(d("ws=ws://0.0.0.0:80"), "ws=ws://0.0.0.0:80");
    }

    #[test]
    fn ticket_round_trip() {
        let a = PeerAddress::new(
            id(),
            vec![
                TransportAddr::Quic("127.0.0.1:4001".parse().unwrap()),
                TransportAddr::Tcp("[::1]:4000".parse().unwrap()),
                TransportAddr::Relay("ws://127.0.0.1:7000/relay".into()),
            ],
        );
        let t = a.ticket();
        assert!(!t.contains(' '));
        assert_eq!(t.parse::<PeerAddress>().unwrap(), a);
        assert_eq!(a.hints, vec![Protocol::Quic, Protocol::Tcp, Protocol::WebSocket]);
        let bare: PeerAddress = id().to_string().parse().unwrap();
        assert!(bare.addrs.is_empty());
    }

    #[test]
    fn ticket_garbage_says_what_is_wrong() {
        let p = id().to_string();
        let cases = [
            ("", "empty"),
            ("hello", "characters"),
            (&format!("{p}@tcp127.0.0.1:1") as &str, "prefix"),
            (&format!("{p}@sctp=1.2.3.4:5"), "unknown protocol"),
            (&format!("{p}@tcp=localhost"), "HOST:PORT"),
            (&format!("{p}@relay=http://x"), "ws://"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<PeerAddress>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?} → {e}");
        }
    }

    #[test]
    fn ticket_with_port_zero_is_refused_but_listen_addresses_keep_it() {
        let p = id().to_string();
        for entry in [
            "tcp=127.0.0.1:0",
            "quic=[::1]:0",
            "ws=ws://127.0.0.1:0/kizuna",
            "ws=wss://[::1]:0",
            "relay=ws://relay.example:0/relay",
        ] {
            let e = format!("{p}@quic=127.0.0.1:1,{entry}").parse::<PeerAddress>().unwrap_err();
            assert!(matches!(&e, AddressError::PortZero { addr } if addr == entry), "{entry}: {e:?}");
            assert!(e.to_string().contains("port 0, which cannot be dialed"), "{e}");
            // The same text as a listen address is fine.
            let listen: TransportAddr = entry.parse().unwrap();
            assert_eq!(listen.to_string(), entry);
        }
        // Default ports of URLs and ports that merely contain a 0 are dialable.
        let ok = format!("{p}@ws=ws://host,ws=wss://host/x,tcp=1.2.3.4:10,relay=ws://r:8080/0");
        assert_eq!(ok.parse::<PeerAddress>().unwrap().addrs.len(), 4);
    }

    #[test]
    fn serde_round_trip() {
        let a: PeerAddress = format!("{}@tcp=1.2.3.4:5,webrtc=1", id()).parse().unwrap();
        let b = rmp_serde::to_vec_named(&a).unwrap();
        assert_eq!(rmp_serde::from_slice::<PeerAddress>(&b).unwrap(), a);
    }
}
