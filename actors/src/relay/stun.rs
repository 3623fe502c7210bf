//! The relay's STUN responder (`--stun UDP_ADDR`): RFC 5389 / RFC 8489 Binding, plus the
//! RFC 5780 NAT behaviour discovery attributes when the relay has two addresses.
//!
//! A Binding request gets a success response carrying XOR-MAPPED-ADDRESS (the source
//! address the request came from) and SOFTWARE. Anything that is not a STUN message
//! (RFC 8489 §5: top two bits zero, the magic cookie) is ignored; a request that cannot be
//! decoded, or of another method, gets a `400 Bad Request` error response; responses and
//! indications are ignored. Nothing here panics on any input.
//!
//! **RFC 5780.** Given exactly two `--stun` addresses on different IPs of one family and
//! with the same port `P` (`P < 65535`; `0` for both picks a free one), the relay answers
//! on the four addresses of an [`Rfc5780Grid`]: both IPs × ports `P` and `P + 1` (the
//! *companion port*). Every answer then carries OTHER-ADDRESS (the address differing in
//! both IP and port from the one the request arrived on) and RESPONSE-ORIGIN (the address
//! the answer is sent from), and CHANGE-REQUEST is honoured: change IP and/or port picks
//! which of the four sockets answers. Without a grid, a request whose CHANGE-REQUEST asks
//! for a change gets `420 Unknown Attribute` (RFC 5780 §6.1: the server cannot honour it),
//! as a client expects from a server without RFC 5780.
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
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessage,
    StunMessageBuilder, TransactionId, MAGIC_COOKIE,
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

/// The CHANGE-REQUEST attribute type (RFC 5780 §7.2), listed in UNKNOWN-ATTRIBUTES when
/// it cannot be honoured.
const CHANGE_REQUEST: u16 = 0x0003;

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
        let request_class = class_bits(packet) == 0b00;
        match MessageDecoderBuilder::default().build().decode(packet) {
            Ok((msg, _)) if msg.class() == MessageClass::Request && msg.method() == BINDING => {
                self.binding(&msg, from, local)
            }
            Ok((msg, _)) if msg.class() == MessageClass::Request => {
                self.error(*msg.transaction_id(), 400, "Only Binding is supported", None).map(|p| (p, None))
            }
            Ok(_) => None,
            Err(_) if request_class => self.error(tid, 400, "Bad Request", None).map(|p| (p, None)),
            Err(_) => None,
        }
    }

    fn binding(
        &self,
        req: &StunMessage,
        from: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<(Vec<u8>, Option<SocketAddr>)> {
        let (change_ip, change_port) = match req.get::<ChangeRequest>() {
            Some(StunAttribute::ChangeRequest(c)) => (
                c.flags().contains(ChangeRequestFlags::ChangeIp),
                c.flags().contains(ChangeRequestFlags::ChangePort),
            ),
            _ => (false, false),
        };
        let tid = *req.transaction_id();
        let grid = self.grid.zip(local).filter(|(g, l)| g.addrs().contains(l));
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(tid)
            .with_attribute(XorMappedAddress::from(from));
        let send_from = match grid {
            Some((g, local)) => {
                let send_from = g.changed(local, change_ip, change_port)?;
                let other = g.changed(local, true, true)?;
                b = b
                    .with_attribute(OtherAddress::from(other))
                    .with_attribute(ResponseOrigin::from(send_from));
                Some(send_from)
            }
            None if change_ip || change_port => {
                let p = self.error(tid, 420, "Unknown Attribute", Some(CHANGE_REQUEST))?;
                return Some((p, None));
            }
            None => None,
        };
        if let Ok(s) = Software::new(self.software.as_str()) {
            b = b.with_attribute(s);
        }
        Some((encode(&b.build())?, send_from))
    }

    fn error(&self, tid: TransactionId, code: u16, reason: &str, unknown: Option<u16>) -> Option<Vec<u8>> {
        let code = stun_rs::ErrorCode::new(code, reason).ok()?;
        let mut b = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_transaction_id(tid)
            .with_attribute(ErrorCodeAttr::from(code));
        if let Some(attr) = unknown {
            let mut u = UnknownAttributes::default();
            u.add(attr);
            b = b.with_attribute(u);
        }
        if let Ok(s) = Software::new(self.software.as_str()) {
            b = b.with_attribute(s);
        }
        encode(&b.build())
    }
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

/// The two class bits of the message type (C1 at bit 8, C0 at bit 4).
fn class_bits(packet: &[u8]) -> u8 {
    let t = u16::from_be_bytes([packet[0], packet[1]]);
    (((t >> 7) & 0b10) | ((t >> 4) & 0b01)) as u8
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
}
