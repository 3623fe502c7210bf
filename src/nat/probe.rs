//! STUN Binding transactions on a `tokio` UDP socket, and [`discover`], which runs the
//! [`NatDiscovery`] test sequence on that socket.
//!
//! A transaction ([RFC 8489 §6.2.1]) sends a Binding request, retransmits it with a
//! doubling timeout ([`ProbeConfig`]), and ends with the first response carrying its
//! transaction id, or with [`Outcome::Timeout`]. Datagrams that are not STUN, are not
//! responses, or carry another transaction id are dropped; a response that does not
//! decode is dropped too (an attacker's garbage must not end a transaction early). Every
//! transaction is bounded by [`ProbeConfig::deadline`]. Encoding and decoding use
//! `stun-rs`; nothing here panics on network input.
//!
//! [RFC 8489 §6.2.1]: https://www.rfc-editor.org/rfc/rfc8489#section-6.2.1

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use stun_rs::{
    attributes::{
        discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin},
        stun::{ErrorCode, MappedAddress, Software, XorMappedAddress},
    },
    methods::BINDING,
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessageBuilder,
    TransactionId, MAGIC_COOKIE,
};
use tokio::{net::UdpSocket, time::Instant};

use super::{
    classify::{BindingResponse, NatDiscovery, NatReport, Outcome, Test},
    NatError, MAX_SERVERS,
};

/// Largest datagram read. STUN over UDP must fit the path MTU (RFC 8489 §6.1), so 1500
/// bytes holds any answer; a larger datagram is cut and then fails to decode.
const MAX_DATAGRAM: usize = 1500;

/// Size of the STUN header (RFC 8489 §5).
const HEADER_LEN: usize = 20;

/// The SOFTWARE attribute of every request (RFC 8489 §14.14). Besides naming the client,
/// it makes the smallest request 36 bytes: a server that answers with at most 3× the
/// request (as the Kizuna relay does, against reflection amplification) then has room
/// (108 bytes) for everything discovery needs even over IPv6 — XOR-MAPPED-ADDRESS,
/// OTHER-ADDRESS and RESPONSE-ORIGIN, 92 bytes — which a bare 20-byte request (60 bytes)
/// would not get. SOFTWARE rather than PADDING (RFC 5780 §7.6) because it is
/// comprehension-optional: a server that does not know PADDING must refuse it with 420.
const SOFTWARE: &str = concat!("kizuna ", env!("CARGO_PKG_VERSION"));

/// Consecutive receive errors after which a transaction gives up with
/// [`NatError::Io`]: a few are normal (ICMP errors of earlier sends surface on receive on
/// some systems), an endless run means the socket is broken.
const MAX_RECV_ERRORS: u32 = 16;

/// Retransmission of one Binding transaction (RFC 8489 §6.2.1).
///
/// Requests go out at 0, RTO, 3·RTO, 7·RTO, … (the interval doubles) until
/// `max_transmissions` are sent; the transaction fails `last_wait` RTOs after the last
/// one. The RFC's defaults (RTO 500 ms, Rc 7, Rm 16) give 39.5 s, far too long for an
/// interactive probe that runs several transactions; the defaults here are below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The first retransmission timeout. Default 250 ms: above any sane path's RTT to a
    /// STUN server, short enough for a quick answer on loss.
    pub initial_rto: Duration,
    /// Requests sent per transaction (RFC 8489's Rc). Default 4: survives three losses.
    pub max_transmissions: u32,
    /// How many initial RTOs to wait after the last request (RFC 8489's Rm). Default 4.
    pub last_wait: u32,
}

impl Default for ProbeConfig {
    /// RTO 250 ms, 4 transmissions, 4 RTOs of last wait: requests at 0, 0.25, 0.75 and
    /// 1.75 s, deadline 2.75 s.
    fn default() -> Self {
        Self { initial_rto: Duration::from_millis(250), max_transmissions: 4, last_wait: 4 }
    }
}

impl ProbeConfig {
    /// When (after the first request) each request is sent.
    pub fn transmit_times(&self) -> Vec<Duration> {
        let mut t = Duration::ZERO;
        let mut rto = self.initial_rto;
        let mut out = Vec::with_capacity(self.max_transmissions.max(1) as usize);
        for _ in 0..self.max_transmissions.max(1) {
            out.push(t);
            t = t.saturating_add(rto);
            rto = rto.saturating_mul(2);
        }
        out
    }

    /// How long after the first request the transaction gives up.
    pub fn deadline(&self) -> Duration {
        let last = self.transmit_times().last().copied().unwrap_or_default();
        last.saturating_add(self.initial_rto.saturating_mul(self.last_wait))
    }
}

/// Encodes a Binding request with transaction id `tid`, a CHANGE-REQUEST attribute if
/// either flag is set, and SOFTWARE (`kizuna VERSION`, which also sizes the request so
/// that amplification-bounded servers answer in full; see the constant's doc).
pub fn encode_request(tid: [u8; 12], change_ip: bool, change_port: bool) -> Vec<u8> {
    let mut b =
        StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::from(tid));
    if change_ip || change_port {
        let flags = match (change_ip, change_port) {
            (true, true) => ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            (true, false) => ChangeRequestFlags::ChangeIp.into(),
            _ => ChangeRequestFlags::ChangePort.into(),
        };
        b = b.with_attribute(ChangeRequest::new(Some(flags)));
    }
    if let Ok(software) = Software::new(SOFTWARE) {
        b = b.with_attribute(software);
    }
    let msg = b.build();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // A Binding request with a 4-byte attribute and a short SOFTWARE is under 100 bytes: it
    // always fits, so encoding cannot fail; an empty datagram (dropped by any server) would
    // be the result if it somehow did.
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, &msg).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The transaction id of `packet` if its 20-byte header is a STUN (RFC 8489 §5) response
/// header: first two bits zero, the magic cookie, class success or error. Only the
/// header is read (the body is [`parse_response`]'s business), so this is cheap enough
/// to route every datagram of a shared socket by.
pub fn response_transaction_id(packet: &[u8]) -> Option<[u8; 12]> {
    let header = packet.get(..HEADER_LEN)?;
    if header[0] & 0xc0 != 0 {
        return None;
    }
    // The class bits are bit 8 (C1) and bit 4 (C0) of the message type: responses have C1.
    let message_type = u16::from_be_bytes([header[0], header[1]]);
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if message_type & 0x0100 == 0 || cookie != MAGIC_COOKIE.as_u32() {
        return None;
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&header[8..HEADER_LEN]);
    Some(tid)
}

/// Parses a datagram from `source` as the answer to transaction `tid`: `None` if it is
/// not STUN, not a Binding response, for another transaction, or does not decode.
pub fn parse_response(packet: &[u8], source: SocketAddr, tid: &[u8; 12]) -> Option<Outcome> {
    if response_transaction_id(packet).as_ref() != Some(tid) {
        return None;
    }
    let (msg, _) = MessageDecoderBuilder::default().build().decode(packet).ok()?;
    if msg.method() != BINDING {
        return None;
    }
    match msg.class() {
        MessageClass::SuccessResponse => {
            let xor = msg.get::<XorMappedAddress>().and_then(|a| match a {
                StunAttribute::XorMappedAddress(x) => Some(*x.socket_address()),
                _ => None,
            });
            let plain = msg.get::<MappedAddress>().and_then(|a| match a {
                StunAttribute::MappedAddress(x) => Some(*x.socket_address()),
                _ => None,
            });
            let Some(mapped) = xor.or(plain) else { return Some(Outcome::Error(None)) };
            let other_address = msg.get::<OtherAddress>().and_then(|a| match a {
                StunAttribute::OtherAddress(x) => Some(*x.socket_address()),
                _ => None,
            });
            let response_origin = msg.get::<ResponseOrigin>().and_then(|a| match a {
                StunAttribute::ResponseOrigin(x) => Some(*x.socket_address()),
                _ => None,
            });
            Some(Outcome::Success(BindingResponse { mapped, source, other_address, response_origin }))
        }
        MessageClass::ErrorResponse => {
            let code = msg.get::<ErrorCode>().and_then(|a| match a {
                StunAttribute::ErrorCode(e) => Some(e.error_code().error_code()),
                _ => None,
            });
            Some(Outcome::Error(code))
        }
        _ => None,
    }
}

/// Runs one Binding transaction for `test` on `socket`.
///
/// Cancel-safe: dropping the future abandons the transaction (a late answer is then a
/// stray datagram for whoever reads the socket next).
pub async fn binding(socket: &UdpSocket, test: &Test, config: &ProbeConfig) -> Result<Outcome, NatError> {
    let tid: [u8; 12] = *TransactionId::default().as_bytes();
    let request = encode_request(tid, test.change_ip, test.change_port);
    let start = Instant::now();
    let deadline = start + config.deadline();
    let mut sends = config.transmit_times().into_iter().map(|t| start + t).peekable();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut recv_errors = 0;
    loop {
        // Send every request that is due.
        while sends.peek().is_some_and(|t| *t <= Instant::now()) {
            sends.next();
            if let Err(e) = socket.send_to(&request, test.dest).await {
                // Unreachable networks and the like: the request is lost, as on the wire.
                tracing::debug!(dest = %test.dest, "STUN send failed: {e}");
            }
        }
        let wake = sends.peek().copied().unwrap_or(deadline).min(deadline);
        match tokio::time::timeout_at(wake, socket.recv_from(&mut buf)).await {
            Err(_) if wake >= deadline => return Ok(Outcome::Timeout),
            Err(_) => {}
            Ok(Ok((n, from))) => {
                recv_errors = 0;
                if let Some(outcome) = parse_response(&buf[..n], from, &tid) {
                    return Ok(outcome);
                }
            }
            Ok(Err(e)) => {
                recv_errors += 1;
                tracing::debug!("STUN receive failed: {e}");
                if recv_errors >= MAX_RECV_ERRORS {
                    return Err(NatError::Io(e));
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::Timeout);
        }
    }
}

/// Classifies the NAT in front of `socket` with the [`NatDiscovery`] tests against
/// `servers` (the first preferred; one with RFC 5780 support decides everything, else two
/// are compared). At most [`MAX_SERVERS`]; the run takes at most one
/// [`ProbeConfig::deadline`] per test, and there are at most `servers.len() + 4` tests
/// (test I per server until one answers, then two filtering and two mapping tests, or the
/// remaining servers for the comparison).
///
/// If the socket is bound to an unspecified address (`0.0.0.0`), the local address
/// reported and compared with the mapped one is the address the system would use to
/// reach the first server.
///
/// Cancel-safe in the sense of [`binding`].
pub async fn discover(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    config: &ProbeConfig,
) -> Result<NatReport, NatError> {
    if servers.is_empty() {
        return Err(NatError::NoServers);
    }
    if servers.len() > MAX_SERVERS {
        return Err(NatError::TooManyServers { count: servers.len(), max: MAX_SERVERS });
    }
    let bound = socket.local_addr()?;
    if let Some(&server) = servers.iter().find(|s| s.is_ipv4() != bound.is_ipv4()) {
        return Err(NatError::AddressFamily { server, local: bound });
    }
    let local = concrete_local(bound, servers[0]);
    let mut machine = NatDiscovery::new(servers.to_vec(), local);
    while let Some(test) = machine.poll_test() {
        let outcome = binding(socket, &test, config).await?;
        tracing::debug!(?test, ?outcome, "NAT discovery test");
        machine.handle_outcome(outcome);
    }
    Ok(machine.report())
}

/// `bound` with its unspecified IP replaced by the one the system routes `towards` from
/// (learned by connecting a throwaway UDP socket, which sends nothing).
fn concrete_local(bound: SocketAddr, towards: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let any: SocketAddr = match towards.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let ip = std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(towards)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(bound.ip());
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
pub(crate) mod tests {
    use super::*;

    #[test]
    fn default_schedule() {
        let c = ProbeConfig::default();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(c.transmit_times(), vec![ms(0), ms(250), ms(750), ms(1750)]);
        assert_eq!(c.deadline(), ms(2750));
        let rfc = ProbeConfig { initial_rto: ms(500), max_transmissions: 7, last_wait: 16 };
        assert_eq!(rfc.deadline(), ms(39_500)); // RFC 8489 §6.2.1's example.
        let zero = ProbeConfig { initial_rto: ms(100), max_transmissions: 0, last_wait: 0 };
        assert_eq!(zero.transmit_times(), vec![ms(0)]);
        let huge = ProbeConfig { initial_rto: Duration::MAX, max_transmissions: 100, last_wait: u32::MAX };
        assert_eq!(huge.deadline(), Duration::MAX);
    }

    /// A STUN Binding response with `attrs`, for tests.
    pub(crate) fn response(tid: [u8; 12], class: MessageClass, attrs: Vec<StunAttribute>) -> Vec<u8> {
        let mut b = StunMessageBuilder::new(BINDING, class).with_transaction_id(TransactionId::from(tid));
        for a in attrs {
            b = b.with_attribute(a);
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = MessageEncoderBuilder::default().build().encode(&mut buf, &b.build()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn parses_success_error_and_ignores_strangers() {
        let tid = [5u8; 12];
        let src: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:3479".parse().unwrap();
        let ok = response(
            tid,
            MessageClass::SuccessResponse,
            vec![
                XorMappedAddress::from(mapped).into(),
                OtherAddress::from(other).into(),
                ResponseOrigin::from(src).into(),
            ],
        );
        let want =
            BindingResponse { mapped, source: src, other_address: Some(other), response_origin: Some(src) };
        assert_eq!(parse_response(&ok, src, &tid), Some(Outcome::Success(want)));
        assert_eq!(parse_response(&ok, src, &[6; 12]), None);
        // MAPPED-ADDRESS only (RFC 3489 servers).
        let old = response(tid, MessageClass::SuccessResponse, vec![MappedAddress::from(mapped).into()]);
        assert!(matches!(parse_response(&old, src, &tid), Some(Outcome::Success(r)) if r.mapped == mapped));
        // No address at all: unusable.
        let empty = response(tid, MessageClass::SuccessResponse, vec![]);
        assert_eq!(parse_response(&empty, src, &tid), Some(Outcome::Error(None)));
        let code = stun_rs::ErrorCode::new(420, "Unknown Attribute").unwrap();
        let err = response(tid, MessageClass::ErrorResponse, vec![ErrorCode::from(code).into()]);
        assert_eq!(parse_response(&err, src, &tid), Some(Outcome::Error(Some(420))));
        // Our own request echoed back is not a response.
        assert_eq!(parse_response(&encode_request(tid, true, true), src, &tid), None);
    }

    #[test]
    fn garbage_never_panics() {
        let tid = [5u8; 12];
        let src: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let good = response(
            tid,
            MessageClass::SuccessResponse,
            vec![
                XorMappedAddress::from("198.51.100.1:40000".parse::<SocketAddr>().unwrap()).into(),
                OtherAddress::from("[2001:db8::1]:3479".parse::<SocketAddr>().unwrap()).into(),
            ],
        );
        assert!(parse_response(b"", src, &tid).is_none());
        assert!(parse_response(&[0u8; 20], src, &tid).is_none());
        for i in 0..good.len() {
            let _ = parse_response(&good[..i], src, &tid);
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                let _ = parse_response(&m, src, &tid);
            }
        }
        // Attribute length fields claiming huge sizes.
        let mut m = good.clone();
        m[2] = 0xff;
        m[3] = 0xff;
        assert!(parse_response(&m, src, &tid).is_none());
    }

    #[test]
    fn requests_carry_change_request_only_when_asked_and_software_always() {
        let software = 4 + SOFTWARE.len().next_multiple_of(4);
        let plain = encode_request([1; 12], false, false);
        assert_eq!(plain.len(), HEADER_LEN + software);
        assert_eq!(&plain[HEADER_LEN..HEADER_LEN + 2], &[0x80, 0x22]); // SOFTWARE
        let r = encode_request([1; 12], true, false);
        assert_eq!(r.len(), HEADER_LEN + 8 + software);
        assert_eq!(&r[HEADER_LEN..HEADER_LEN + 8], &[0, 3, 0, 4, 0, 0, 0, 4]);
        assert_eq!(&encode_request([1; 12], false, true)[HEADER_LEN + 4..HEADER_LEN + 8], &[0, 0, 0, 2]);
        assert_eq!(&encode_request([1; 12], true, true)[HEADER_LEN + 4..HEADER_LEN + 8], &[0, 0, 0, 6]);
    }

    #[test]
    fn requests_leave_room_for_a_full_ipv6_answer_within_three_times() {
        let v6 = |s: &str| s.parse::<SocketAddr>().unwrap();
        let needed = response(
            [1; 12],
            MessageClass::SuccessResponse,
            vec![
                XorMappedAddress::from(v6("[2001:db8::1]:1")).into(),
                OtherAddress::from(v6("[2001:db8::2]:2")).into(),
                ResponseOrigin::from(v6("[2001:db8::3]:3")).into(),
            ],
        );
        assert_eq!(needed.len(), 92);
        assert!(3 * encode_request([1; 12], false, false).len() >= needed.len());
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_deadline() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = ProbeConfig { initial_rto: Duration::from_millis(20), max_transmissions: 3, last_wait: 2 };
        let t = Test {
            kind: crate::nat::TestKind::Binding(0),
            dest: silent.local_addr().unwrap(),
            change_ip: false,
            change_port: false,
        };
        let start = std::time::Instant::now();
        assert_eq!(binding(&sock, &t, &cfg).await.unwrap(), Outcome::Timeout);
        let took = start.elapsed();
        assert!(took >= cfg.deadline() && took < cfg.deadline() + Duration::from_secs(1), "{took:?}");
        // Three requests arrived (0, 20, 60 ms).
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let (n, _) = silent.try_recv_from(&mut buf).unwrap();
            assert_eq!(n, encode_request([0; 12], false, false).len());
        }
        assert!(silent.try_recv_from(&mut buf).is_err());
        let r = discover(&sock, &[t.dest], &cfg).await.unwrap();
        assert_eq!(r.nat_type, crate::nat::NatType::UdpBlocked);
        assert!(matches!(discover(&sock, &[], &cfg).await, Err(NatError::NoServers)));
        let v6: SocketAddr = "[::1]:3478".parse().unwrap();
        assert!(matches!(discover(&sock, &[v6], &cfg).await, Err(NatError::AddressFamily { .. })));
    }
}
