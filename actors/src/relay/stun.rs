//! The relay's STUN responder (`--stun UDP_ADDR`): RFC 5389 / RFC 8489 Binding, plus the
//! RFC 5780 NAT behaviour discovery attributes when the relay has two addresses.
//!
//! A Binding request gets a success response carrying XOR-MAPPED-ADDRESS (the source
//! address the request came from) and SOFTWARE. Anything that is not a STUN message
//! (RFC 8489 §5: top two bits zero, the magic cookie) is ignored; a request that cannot be
//! decoded, or of another method, gets a `400 Bad Request` error response; a Binding
//! request with a comprehension-required attribute the responder does not understand
//! (RFC 8489 §14: type below 0x8000; see `UNDERSTOOD`) gets `420 Unknown Attribute`
//! listing them in UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1); responses and indications are
//! ignored. Nothing here panics on any input.
//!
//! **Amplification.** No answer is larger than [`MAX_AMPLIFICATION`] times the datagram
//! that caused it, so the responder cannot be used to reflect more traffic at a spoofed
//! source than was sent. What does not fit is left out, least needed first: in a success
//! response SOFTWARE, then RESPONSE-ORIGIN, then OTHER-ADDRESS (XOR-MAPPED-ADDRESS always
//! fits: 44 bytes at most, 2.2 × the smallest request); in an error response the reason
//! phrase, then the tail of UNKNOWN-ATTRIBUTES. Error responses never carry SOFTWARE. An
//! answer that cannot fit even so is not sent. A client that wants the full answer sends a
//! larger request (Kizuna's own carry SOFTWARE, see `kizuna::nat::probe`).
//!
//! **RFC 5780.** Given exactly two `--stun` addresses on different IPs of one family and
//! with the same port `P` (`P < 65535`; `0` for both picks a free one), the relay answers
//! on the four addresses of an [`Rfc5780Grid`]: both IPs × ports `P` and `P + 1` (the
//! *companion port*). Every answer then carries OTHER-ADDRESS (the address differing in
//! both IP and port from the one the request arrived on) and RESPONSE-ORIGIN (the address
//! the answer is sent from) when they fit the bound, and CHANGE-REQUEST is honoured:
//! change IP and/or port picks which of the four sockets answers. Without a grid, a request
//! whose CHANGE-REQUEST asks for a change gets `420 Unknown Attribute` (RFC 5780 §6.1: the
//! server cannot honour it), as a client expects from a server without RFC 5780.
//!
//! [`StunResponder::answer`] and [`StunResponder::answer_at`] are pure (a datagram, its
//! source and the address it arrived on in; a datagram and the address to send it from
//! out). Encoding and decoding use the `stun-rs` crate.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use stun_rs::{
    attributes::{
        discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin},
        stun::{ErrorCode as ErrorCodeAttr, Software, UnknownAttributes, XorMappedAddress},
    },
    methods::BINDING,
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, MessageMethod, MessageType, StunAttribute,
    StunMessage, StunMessageBuilder, TransactionId, MAGIC_COOKIE,
};
use tokio::net::UdpSocket;

use super::RelayServerError;

/// The SOFTWARE attribute of the relay's responses.
pub const SOFTWARE: &str = concat!("kizuna relay ", env!("CARGO_PKG_VERSION"));

/// Largest datagram read. 1500 bytes: a Binding request is 20–100 bytes and STUN
/// messages over UDP must fit the path MTU (RFC 8489 §6.1); larger datagrams are cut and
/// then fail to decode.
const MAX_DATAGRAM: usize = 1500;

/// Size of the STUN header (RFC 8489 §5).
const HEADER_LEN: usize = 20;

/// Largest answer, as a multiple of the size of the datagram it answers. 3: the factor
/// QUIC allows towards an address it has not validated (RFC 9000 §8.1), the usual bound
/// for a UDP service that answers unauthenticated requests; it still fits a full RFC 5780
/// answer over IPv4 (56 bytes) for the smallest request (20 bytes).
pub const MAX_AMPLIFICATION: usize = 3;

/// The CHANGE-REQUEST attribute type (RFC 5780 §7.2), listed in UNKNOWN-ATTRIBUTES when
/// it cannot be honoured.
const CHANGE_REQUEST: u16 = 0x0003;

/// The comprehension-required attribute types (below 0x8000) a Binding request may carry
/// without a 420: RFC 8489's own, which a server without credentials knows and has no use
/// for in a request, and RFC 5780's CHANGE-REQUEST (honoured or refused on its own terms)
/// and PADDING (which only makes a request larger, §7.6). Not RESPONSE-PORT (0x0027): the
/// responder always answers the source port, so RFC 5780 §7.5 wants a 420. Numbers rather
/// than "what `stun-rs` decodes", so the answer does not change with the crate's features.
const UNDERSTOOD: [u16; 13] = [
    0x0001, // MAPPED-ADDRESS
    CHANGE_REQUEST,
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x0014, // REALM
    0x0015, // NONCE
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
    0x0026, // PADDING
];

/// Attempts at finding a free port `P` with `P + 1` also free on both IPs when the grid
/// is configured with port 0. Each attempt binds a fresh ephemeral port, so a clash is
/// rare; 16 makes a failure mean the machine is out of ports.
const GRID_BIND_ATTEMPTS: usize = 16;

/// The four addresses of an RFC 5780 server: two IPs × a port and its companion port + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc5780Grid {
    /// The first `--stun` address's IP.
    pub primary_ip: IpAddr,
    /// The second `--stun` address's IP.
    pub alternate_ip: IpAddr,
    /// The port both `--stun` addresses share.
    pub port: u16,
}

impl Rfc5780Grid {
    /// The grid for these `--stun` addresses, if they form one: exactly two, one family,
    /// different IPs that are not unspecified, one port below 65535 (or 0 for both).
    pub fn from_config(addrs: &[SocketAddr]) -> Option<Self> {
        let [a, b] = addrs else { return None };
        let ok = a.is_ipv4() == b.is_ipv4()
            && a.ip() != b.ip()
            && !a.ip().is_unspecified()
            && !b.ip().is_unspecified()
            && a.port() == b.port()
            && a.port() < u16::MAX;
        ok.then_some(Self { primary_ip: a.ip(), alternate_ip: b.ip(), port: a.port() })
    }

    /// The companion port.
    pub fn alternate_port(&self) -> u16 {
        self.port.wrapping_add(1)
    }

    /// The four addresses: primary IP with port and companion port, then the alternate
    /// IP with both.
    pub fn addrs(&self) -> [SocketAddr; 4] {
        let (p, q) = (self.port, self.alternate_port());
        [
            SocketAddr::new(self.primary_ip, p),
            SocketAddr::new(self.primary_ip, q),
            SocketAddr::new(self.alternate_ip, p),
            SocketAddr::new(self.alternate_ip, q),
        ]
    }

    /// `local` with its IP and/or port swapped for the other one; `None` if `local` is
    /// not in the grid.
    pub fn changed(&self, local: SocketAddr, change_ip: bool, change_port: bool) -> Option<SocketAddr> {
        if !self.addrs().contains(&local) {
            return None;
        }
        let ip = match (change_ip, local.ip() == self.primary_ip) {
            (false, _) => local.ip(),
            (true, true) => self.alternate_ip,
            (true, false) => self.primary_ip,
        };
        let port = match (change_port, local.port() == self.port) {
            (false, _) => local.port(),
            (true, true) => self.alternate_port(),
            (true, false) => self.port,
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// An answer: the datagram and the local address to send it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded STUN message.
    pub packet: Vec<u8>,
    /// The responder address to send it from (the one the request arrived on, unless
    /// CHANGE-REQUEST asked for another).
    pub send_from: SocketAddr,
}

/// Answers STUN requests. See the module docs.
#[derive(Debug, Clone)]
pub struct StunResponder {
    software: String,
    grid: Option<Rfc5780Grid>,
}

impl StunResponder {
    /// A plain responder (no RFC 5780) naming itself `software` in its answers.
    pub fn new(software: impl Into<String>) -> Self {
        Self { software: software.into(), grid: None }
    }

    /// This responder answering on the four addresses of `grid`, with RFC 5780.
    pub fn with_grid(mut self, grid: Rfc5780Grid) -> Self {
        self.grid = Some(grid);
        self
    }

    /// The grid, if RFC 5780 is on.
    pub fn grid(&self) -> Option<Rfc5780Grid> {
        self.grid
    }

    /// The answer to one datagram from `from` of a plain responder, or `None` to ignore
    /// it. (A request asking for a change gets 420.)
    pub fn answer(&self, packet: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        self.respond(packet, from, None).map(|(p, _)| p)
    }

    /// The answer to one datagram from `from` that arrived on the responder's address
    /// `local`, or `None` to ignore it. With a grid containing `local`, RFC 5780 applies.
    pub fn answer_at(&self, packet: &[u8], from: SocketAddr, local: SocketAddr) -> Option<Reply> {
        self.respond(packet, from, Some(local))
            .map(|(packet, send_from)| Reply { packet, send_from: send_from.unwrap_or(local) })
    }

    fn respond(
        &self,
        packet: &[u8],
        from: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<(Vec<u8>, Option<SocketAddr>)> {
        let tid = stun_header(packet)?;
        let bound = packet.len().saturating_mul(MAX_AMPLIFICATION);
        let kind = MessageType::from(u16::from_be_bytes([packet[0], packet[1]]));
        if kind.class() != MessageClass::Request {
            return None;
        }
        match MessageDecoderBuilder::default().build().decode(packet) {
            Ok((msg, _)) if msg.method() == BINDING => self.binding(&msg, from, local, bound),
            Ok(_) => {
                error(tid, kind.method(), 400, "Only Binding is supported", &[], bound).map(|p| (p, None))
            }
            Err(_) => error(tid, kind.method(), 400, "Bad Request", &[], bound).map(|p| (p, None)),
        }
    }

    fn binding(
        &self,
        req: &StunMessage,
        from: SocketAddr,
        local: Option<SocketAddr>,
        bound: usize,
    ) -> Option<(Vec<u8>, Option<SocketAddr>)> {
        let tid = *req.transaction_id();
        let unknown = unknown_required(req);
        if !unknown.is_empty() {
            return Some((error(tid, BINDING, 420, "Unknown Attribute", &unknown, bound)?, None));
        }
        let (change_ip, change_port) = match req.get::<ChangeRequest>() {
            Some(StunAttribute::ChangeRequest(c)) => (
                c.flags().contains(ChangeRequestFlags::ChangeIp),
                c.flags().contains(ChangeRequestFlags::ChangePort),
            ),
            _ => (false, false),
        };
        let grid = self.grid.zip(local).filter(|(g, l)| g.addrs().contains(l));
        // Optional attributes, most needed first: the tail is dropped to fit the bound.
        let mut optional: Vec<StunAttribute> = Vec::with_capacity(3);
        let send_from = match grid {
            Some((g, local)) => {
                let send_from = g.changed(local, change_ip, change_port)?;
                let other = g.changed(local, true, true)?;
                optional.push(OtherAddress::from(other).into());
                optional.push(ResponseOrigin::from(send_from).into());
                Some(send_from)
            }
            None if change_ip || change_port => {
                let p = error(tid, BINDING, 420, "Unknown Attribute", &[CHANGE_REQUEST], bound)?;
                return Some((p, None));
            }
            None => None,
        };
        if let Ok(s) = Software::new(self.software.as_str()) {
            optional.push(s.into());
        }
        let candidates = (0..=optional.len()).rev().map(|n| {
            let b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                .with_transaction_id(tid)
                .with_attribute(XorMappedAddress::from(from));
            optional[..n].iter().fold(b, |b, a| b.with_attribute(a.clone())).build()
        });
        Some((first_within(bound, candidates)?, send_from))
    }
}

/// The comprehension-required attribute types of `req` that are not [`UNDERSTOOD`], each
/// once, in order of appearance.
fn unknown_required(req: &StunMessage) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for t in req.attributes().iter().map(|a| a.attribute_type()) {
        let t = t.as_u16();
        if t < 0x8000 && !UNDERSTOOD.contains(&t) && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// An error response to request `tid` of `method` within `bound` bytes: with `reason` and
/// every `unknown` attribute type in UNKNOWN-ATTRIBUTES (none: no such attribute) if that
/// fits, else without the reason phrase, then with the list halved until one entry is
/// left; `None` if nothing fits.
fn error(
    tid: TransactionId,
    method: MessageMethod,
    code: u16,
    reason: &str,
    unknown: &[u16],
    bound: usize,
) -> Option<Vec<u8>> {
    let message = |reason: &str, count: usize| {
        let code = stun_rs::ErrorCode::new(code, reason).ok()?;
        let mut b = StunMessageBuilder::new(method, MessageClass::ErrorResponse)
            .with_transaction_id(tid)
            .with_attribute(ErrorCodeAttr::from(code));
        if count > 0 {
            b = b.with_attribute(UnknownAttributes::from(&unknown[..count]));
        }
        Some(b.build())
    };
    let shorter = std::iter::successors(Some(unknown.len()), |n| (*n > 1).then_some(n / 2));
    let candidates = std::iter::once((reason, unknown.len())).chain(shorter.map(|n| ("", n)));
    first_within(bound, candidates.filter_map(|(r, n)| message(r, n)))
}

/// The first of `candidates` whose encoding is at most `bound` bytes.
fn first_within(bound: usize, candidates: impl IntoIterator<Item = StunMessage>) -> Option<Vec<u8>> {
    candidates.into_iter().filter_map(|m| encode(&m)).find(|p| p.len() <= bound)
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, msg).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The transaction id if `packet` looks like STUN (length, top bits, magic cookie).
fn stun_header(packet: &[u8]) -> Option<TransactionId> {
    if packet.len() < HEADER_LEN || packet[0] & 0xc0 != 0 {
        return None;
    }
    let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if cookie != MAGIC_COOKIE.as_u32() {
        return None;
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&packet[8..HEADER_LEN]);
    Some(TransactionId::from(tid))
}

/// The relay's bound STUN sockets: one per `--stun` address, or the four of a grid.
#[derive(Debug)]
pub(crate) struct StunSockets {
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    grid: Option<Rfc5780Grid>,
}

fn bind_error(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> RelayServerError {
    move |source| RelayServerError::Bind { what: "STUN socket", addr, source }
}

async fn bind_one(addr: SocketAddr) -> Result<(SocketAddr, Arc<UdpSocket>), RelayServerError> {
    let s = UdpSocket::bind(addr).await.map_err(bind_error(addr))?;
    let bound = s.local_addr().map_err(bind_error(addr))?;
    Ok((bound, Arc::new(s)))
}

async fn bind_grid(grid: Rfc5780Grid) -> Result<Vec<(SocketAddr, Arc<UdpSocket>)>, RelayServerError> {
    let mut out = Vec::with_capacity(4);
    for a in grid.addrs() {
        out.push(bind_one(a).await?);
    }
    Ok(out)
}

impl StunSockets {
    /// Binds the sockets for `addrs` (see the module docs for when a grid is formed).
    pub(crate) async fn bind(addrs: &[SocketAddr]) -> Result<Self, RelayServerError> {
        let Some(mut grid) = Rfc5780Grid::from_config(addrs) else {
            let mut sockets = Vec::with_capacity(addrs.len());
            for &a in addrs {
                sockets.push(bind_one(a).await?);
            }
            return Ok(Self { sockets, grid: None });
        };
        if grid.port != 0 {
            return Ok(Self { sockets: bind_grid(grid).await?, grid: Some(grid) });
        }
        let mut last = None;
        for _ in 0..GRID_BIND_ATTEMPTS {
            let (first, _) = bind_one(SocketAddr::new(grid.primary_ip, 0)).await?;
            if first.port() == u16::MAX {
                continue;
            }
            grid.port = first.port();
            // The probe socket is closed again before the grid binds its port.
            match bind_grid(grid).await {
                Ok(sockets) => return Ok(Self { sockets, grid: Some(grid) }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| bind_error(addrs[0])(std::io::ErrorKind::AddrInUse.into())))
    }

    /// The addresses clients are told: the configured ones, bound (the grid's two
    /// primary-port addresses, or every socket).
    pub(crate) fn client_addrs(&self) -> Vec<SocketAddr> {
        match self.grid {
            Some(g) => vec![SocketAddr::new(g.primary_ip, g.port), SocketAddr::new(g.alternate_ip, g.port)],
            None => self.sockets.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// Spawns one answering task per socket on `rt`.
    pub(crate) fn spawn(self, rt: &tokio::runtime::Runtime) -> Vec<tokio::task::JoinHandle<()>> {
        let mut responder = StunResponder::new(SOFTWARE);
        if let Some(g) = self.grid {
            responder = responder.with_grid(g);
        }
        let all: Arc<[(SocketAddr, Arc<UdpSocket>)]> = self.sockets.into();
        (0..all.len()).map(|i| rt.spawn(serve(all.clone(), i, responder.clone()))).collect()
    }
}

/// Answers requests arriving on `sockets[index]` until aborted, sending each answer from
/// the socket the responder picks (another one of `sockets` for a CHANGE-REQUEST).
async fn serve(sockets: Arc<[(SocketAddr, Arc<UdpSocket>)]>, index: usize, responder: StunResponder) {
    let Some((local, socket)) = sockets.get(index).cloned() else { return };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems; keep going.
                tracing::debug!("STUN receive failed: {e}");
                continue;
            }
        };
        let Some(reply) = responder.answer_at(&buf[..n], from, local) else { continue };
        let Some((_, out)) = sockets.iter().find(|(a, _)| *a == reply.send_from) else { continue };
        if let Err(e) = out.send_to(&reply.packet, from).await {
            tracing::debug!(%from, "STUN send failed: {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;
    use stun_rs::StunAttribute;

    fn request(tid: [u8; 12]) -> Vec<u8> {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(tid))
            .build();
        encode(&msg).unwrap()
    }

    #[test]
    fn binding_request_gets_xor_mapped_address() {
        let r = StunResponder::new("test");
        let from: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let resp = r.answer(&request([7; 12]), from).unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&resp).unwrap();
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(msg.transaction_id().as_ref(), &[7; 12]);
        let attr = msg.get::<XorMappedAddress>().unwrap();
        let StunAttribute::XorMappedAddress(x) = attr else { panic!("{attr:?}") };
        assert_eq!(x.socket_address(), &from);
        assert!(msg.get::<Software>().is_some());
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert!(r.answer(&request([1; 12]), v6).is_some());
    }

    #[test]
    fn garbage_is_ignored_or_refused_without_panic() {
        let r = StunResponder::new("test");
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(r.answer(b"", from).is_none());
        assert!(r.answer(&[0xff; 40], from).is_none());
        // A request header claiming more attribute bytes than present: 400.
        let mut bad = request([3; 12]);
        bad[3] = 40;
        let resp = r.answer(&bad, from).unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&resp).unwrap();
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        // Every prefix and every single-byte corruption: no panic.
        let good = request([9; 12]);
        for i in 0..good.len() {
            let _ = r.answer(&good[..i], from);
            for v in [0u8, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                let _ = r.answer(&m, from);
            }
        }
    }

    fn change_request(tid: [u8; 12], ip: bool, port: bool) -> Vec<u8> {
        let attr = match (ip, port) {
            (true, true) => {
                ChangeRequest::new(Some(ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort))
            }
            (true, false) => ChangeRequest::new(Some(ChangeRequestFlags::ChangeIp.into())),
            (false, true) => ChangeRequest::new(Some(ChangeRequestFlags::ChangePort.into())),
            (false, false) => ChangeRequest::new(None),
        };
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::from(tid))
            .with_attribute(attr)
            .build();
        encode(&msg).unwrap()
    }

    fn addr_attr<T>(msg: &StunMessage) -> Option<SocketAddr>
    where
        T: stun_rs::attributes::StunAttributeType,
    {
        match msg.get::<T>()? {
            StunAttribute::OtherAddress(a) => Some(*a.socket_address()),
            StunAttribute::ResponseOrigin(a) => Some(*a.socket_address()),
            StunAttribute::XorMappedAddress(a) => Some(*a.socket_address()),
            _ => None,
        }
    }

    #[test]
    fn grid_is_formed_only_from_two_ips_on_one_port() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        let g = Rfc5780Grid::from_config(&[p("127.0.0.1:3478"), p("127.0.0.2:3478")]).unwrap();
        assert_eq!(g.alternate_port(), 3479);
        assert_eq!(
            g.addrs(),
            [p("127.0.0.1:3478"), p("127.0.0.1:3479"), p("127.0.0.2:3478"), p("127.0.0.2:3479")]
        );
        assert!(Rfc5780Grid::from_config(&[p("127.0.0.1:0"), p("127.0.0.2:0")]).is_some());
        for bad in [
            vec![p("127.0.0.1:3478")],
            vec![p("127.0.0.1:3478"), p("127.0.0.1:3479")],
            vec![p("127.0.0.1:3478"), p("127.0.0.2:3479")],
            vec![p("0.0.0.0:3478"), p("127.0.0.2:3478")],
            vec![p("127.0.0.1:3478"), p("[::1]:3478")],
            vec![p("127.0.0.1:65535"), p("127.0.0.2:65535")],
            vec![p("127.0.0.1:3478"), p("127.0.0.2:3478"), p("127.0.0.3:3478")],
        ] {
            assert_eq!(Rfc5780Grid::from_config(&bad), None, "{bad:?}");
        }
        assert_eq!(g.changed(p("127.0.0.9:3478"), true, true), None);
    }

    #[test]
    fn rfc5780_answers_honour_change_request_from_every_grid_address() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        let g = Rfc5780Grid::from_config(&[p("192.0.2.1:3478"), p("192.0.2.2:3478")]).unwrap();
        let r = StunResponder::new("test").with_grid(g);
        let from = p("198.51.100.7:40000");
        for local in g.addrs() {
            for (ci, cp) in [(false, false), (true, false), (false, true), (true, true)] {
                let req = if ci || cp { change_request([4; 12], ci, cp) } else { request([4; 12]) };
                let reply = r.answer_at(&req, from, local).unwrap();
                let want = g.changed(local, ci, cp).unwrap();
                assert_eq!(reply.send_from, want, "{local} {ci} {cp}");
                assert_ne!(reply.send_from.ip() == local.ip(), ci);
                assert_ne!(reply.send_from.port() == local.port(), cp);
                let (msg, _) = MessageDecoderBuilder::default().build().decode(&reply.packet).unwrap();
                assert_eq!(msg.class(), MessageClass::SuccessResponse);
                assert_eq!(addr_attr::<XorMappedAddress>(&msg), Some(from));
                assert_eq!(addr_attr::<ResponseOrigin>(&msg), Some(want));
                let other = addr_attr::<OtherAddress>(&msg).unwrap();
                assert!(other.ip() != local.ip() && other.port() != local.port(), "{other}");
                assert!(g.addrs().contains(&other));
            }
        }
        // A request arriving on an address outside the grid is answered plainly.
        let reply = r.answer_at(&request([2; 12]), from, p("192.0.2.3:3478")).unwrap();
        assert_eq!(reply.send_from, p("192.0.2.3:3478"));
    }

    #[test]
    fn plain_responder_refuses_change_request_with_420() {
        let r = StunResponder::new("test");
        let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let reply = r.answer_at(&change_request([8; 12], true, false), from, local).unwrap();
        assert_eq!(reply.send_from, local);
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&reply.packet).unwrap();
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        let Some(StunAttribute::ErrorCode(e)) = msg.get::<ErrorCodeAttr>() else { panic!("{msg:?}") };
        assert_eq!(e.error_code().error_code(), 420);
        let Some(StunAttribute::UnknownAttributes(u)) = msg.get::<UnknownAttributes>() else {
            panic!("{msg:?}")
        };
        assert_eq!(u.attributes(), &[CHANGE_REQUEST]);
        // A CHANGE-REQUEST asking for no change is a plain Binding request.
        let reply = r.answer_at(&change_request([8; 12], false, false), from, local).unwrap();
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&reply.packet).unwrap();
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert!(msg.get::<OtherAddress>().is_none());
    }

    /// A STUN message built byte by byte: `msg_type` (class and method bits), transaction
    /// id `[5; 12]`, and `attrs` as (type, value) with zero padding. Lets tests send what
    /// `stun-rs` cannot encode (unknown attributes, any method).
    fn raw(msg_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = msg_type.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.as_u32().to_be_bytes());
        m.extend_from_slice(&[5; 12]);
        m.extend_from_slice(&body);
        m
    }

    /// Size of an attribute whose value is `len` bytes (RFC 8489 §14: 4-byte header, padded).
    fn attr(len: usize) -> usize {
        4 + len.next_multiple_of(4)
    }

    #[test]
    fn every_answer_is_at_most_three_times_its_request() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        let g = Rfc5780Grid::from_config(&[p("192.0.2.1:3478"), p("192.0.2.2:3478")]).unwrap();
        let g6 = Rfc5780Grid::from_config(&[p("[2001:db8::1]:3478"), p("[2001:db8::2]:3478")]).unwrap();
        let plain = StunResponder::new(SOFTWARE);
        let (v4, v6) = (p("198.51.100.7:40000"), p("[2001:db8:1::7]:40000"));
        let (on4, on6, off) = (g.addrs()[0], g6.addrs()[0], p("192.0.2.9:3478"));
        let gridded = StunResponder::new(SOFTWARE).with_grid(g);
        let gridded6 = StunResponder::new(SOFTWARE).with_grid(g6);
        let sw = attr(SOFTWARE.len());
        let (a4, a6) = (attr(8), attr(20)); // An IPv4 / IPv6 address attribute.
        let binding = raw(0x0001, &[]);
        let change = change_request([5; 12], true, true);
        let kizuna_probe = kizuna::nat::probe::encode_request([5; 12], false, false);
        let kizuna_change = kizuna::nat::probe::encode_request([5; 12], true, true);
        let padded = raw(0x0001, &[(0x0026, &[0; 36])]);
        let unknown_req = raw(0x0001, &[(0x7777, &[])]);
        let many_unknown: Vec<(u16, &[u8])> = (0x4000..0x4064).map(|t| (t, &[][..])).collect();
        let many_unknown = raw(0x0001, &many_unknown);
        let unknown_opt = raw(0x0001, &[(0x8777, &[1, 2, 3, 4])]);
        let response_port = raw(0x0001, &[(0x0027, &[0x12, 0x34, 0, 0])]);
        let mut truncated = binding.clone();
        truncated[3] = 40; // Claims 40 bytes of attributes that are not there.
        let allocate = raw(0x0003, &[]);
        let indication = raw(0x0011, &[]);
        let success = raw(0x0101, &[(0x0020, &[0, 1, 0, 0, 0, 0, 0, 0])]);
        let error_response = raw(0x0111, &[]);
        let not_stun = [0x80; 40];
        let reason = |r: &str| attr(4 + r.len());
        /// Kind, responder, request, from, arrived on, expected answer size (None: no answer).
        type Case<'a> = (&'a str, &'a StunResponder, &'a [u8], SocketAddr, SocketAddr, Option<usize>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("Binding, plain, IPv4", &plain, &binding, v4, off, Some(20 + a4 + sw)),
            ("Binding, plain, IPv6 (SOFTWARE left out)", &plain, &binding, v6, off, Some(20 + a6)),
            ("Binding, grid, IPv4 (SOFTWARE left out)", &gridded, &binding, v4, on4, Some(20 + 3 * a4)),
            ("Binding, grid, IPv6 (only XOR-MAPPED-ADDRESS fits)", &gridded6, &binding, v6, on6, Some(20 + a6)),
            ("Binding + CHANGE-REQUEST, grid, IPv4", &gridded, &change, v4, on4, Some(20 + 3 * a4 + sw)),
            ("Binding + CHANGE-REQUEST, grid, IPv6 (no RESPONSE-ORIGIN)", &gridded6, &change, v6, on6, Some(20 + 2 * a6)),
            ("Binding + CHANGE-REQUEST, no grid: 420", &plain, &change, v4, off, Some(20 + reason("Unknown Attribute") + attr(2))),
            ("Kizuna probe (SOFTWARE), grid, IPv4", &gridded, &kizuna_probe, v4, on4, Some(20 + 3 * a4 + sw)),
            ("Kizuna probe (SOFTWARE), grid, IPv6", &gridded6, &kizuna_probe, v6, on6, Some(20 + 3 * a6)),
            ("Kizuna probe + CHANGE-REQUEST, grid, IPv6", &gridded6, &kizuna_change, v6, on6, Some(20 + 3 * a6 + sw)),
            ("Binding + PADDING (60 bytes), grid, IPv6", &gridded6, &padded, v6, on6, Some(20 + 3 * a6 + sw)),
            ("Binding + unknown comprehension-required: 420", &plain, &unknown_req, v4, off, Some(20 + reason("Unknown Attribute") + attr(2))),
            ("Binding + 100 unknown comprehension-required: 420", &plain, &many_unknown, v4, off, Some(20 + reason("Unknown Attribute") + attr(200))),
            ("Binding + RESPONSE-PORT (not honoured): 420", &plain, &response_port, v4, off, Some(20 + reason("Unknown Attribute") + attr(2))),
            ("Binding + unknown comprehension-optional", &plain, &unknown_opt, v4, off, Some(20 + a4 + sw)),
            ("Allocate request (other method): 400", &plain, &allocate, v4, off, Some(20 + reason("Only Binding is supported"))),
            ("Malformed Binding request: 400", &plain, &truncated, v4, off, Some(20 + reason("Bad Request"))),
            ("Binding indication", &plain, &indication, v4, off, None),
            ("Binding success response", &plain, &success, v4, off, None),
            ("Binding error response", &plain, &error_response, v4, off, None),
            ("Not STUN", &plain, &not_stun, v4, off, None),
        ];
        for (kind, responder, req, from, local, want) in cases {
            let got = responder.answer_at(req, from, local);
            let ratio = got.as_ref().map(|r| r.packet.len() as f64 / req.len() as f64);
            eprintln!(
                "{kind}: {} → {:?} bytes, ratio {ratio:.2?}",
                req.len(),
                got.as_ref().map(|r| r.packet.len())
            );
            assert_eq!(got.as_ref().map(|r| r.packet.len()), want, "{kind}");
            let Some(reply) = got else { continue };
            assert!(reply.packet.len() <= MAX_AMPLIFICATION * req.len(), "{kind}");
            let (msg, _) = MessageDecoderBuilder::default().build().decode(&reply.packet).unwrap();
            assert_eq!(msg.transaction_id().as_ref(), &req[8..20], "{kind}");
            assert_eq!(
                msg.method(),
                MessageType::from(u16::from_be_bytes([req[0], req[1]])).method(),
                "{kind}"
            );
            assert!(
                msg.get::<XorMappedAddress>().is_some() || msg.class() == MessageClass::ErrorResponse,
                "{kind}"
            );
            if msg.class() == MessageClass::ErrorResponse {
                assert!(msg.get::<Software>().is_none(), "{kind}: error responses carry no SOFTWARE");
            }
        }
        // The 420s list exactly what was not understood.
        let listed = |req: &[u8]| {
            let reply = plain.answer(req, v4).unwrap();
            let (msg, _) = MessageDecoderBuilder::default().build().decode(&reply).unwrap();
            let Some(StunAttribute::UnknownAttributes(u)) = msg.get::<UnknownAttributes>() else { panic!() };
            u.attributes().to_vec()
        };
        assert_eq!(listed(&unknown_req), [0x7777]);
        assert_eq!(listed(&response_port), [0x0027]);
        assert_eq!(listed(&many_unknown), (0x4000..0x4064).collect::<Vec<u16>>());
    }

    #[test]
    fn error_responses_shed_the_reason_then_unknown_attributes_to_fit() {
        let tid = TransactionId::from([1; 12]);
        let types: Vec<u16> = (0x4000..0x400a).collect();
        let full = error(tid, BINDING, 420, "Unknown Attribute", &types, usize::MAX).unwrap();
        assert_eq!(full.len(), 20 + attr(4 + 17) + attr(20));
        let decode = |p: &[u8]| MessageDecoderBuilder::default().build().decode(p).unwrap().0;
        // No room for the reason phrase: dropped, every type kept.
        let p = error(tid, BINDING, 420, "Unknown Attribute", &types, full.len() - 1).unwrap();
        assert_eq!(p.len(), 20 + attr(4) + attr(20));
        let Some(StunAttribute::ErrorCode(e)) = decode(&p).get::<ErrorCodeAttr>().cloned() else { panic!() };
        assert_eq!((e.error_code().error_code(), e.error_code().reason()), (420, ""));
        // 40 bytes: the list is halved until it fits (10 → 5 → 2 entries).
        let p = error(tid, BINDING, 420, "Unknown Attribute", &types, 40).unwrap();
        let Some(StunAttribute::UnknownAttributes(u)) = decode(&p).get::<UnknownAttributes>().cloned() else {
            panic!()
        };
        assert_eq!(u.attributes(), &types[..2]);
        // Not even a 420 with one entry fits: nothing is sent.
        assert_eq!(error(tid, BINDING, 420, "Unknown Attribute", &types, 35), None);
        assert_eq!(error(tid, BINDING, 400, "Bad Request", &[], 27), None);
        assert_eq!(error(tid, BINDING, 400, "Bad Request", &[], 28).map(|p| p.len()), Some(28));
    }
}
