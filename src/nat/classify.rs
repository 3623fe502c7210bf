//! NAT classification from STUN answers, sans-IO.
//!
//! Behaviours are those of [RFC 4787] §4.1 (mapping) and §5 (filtering); the tests are
//! those of [RFC 5780] §4.3 and §4.4, run in this order on one local socket:
//!
//! | test | sent to | CHANGE-REQUEST | learns |
//! |------|---------|----------------|--------|
//! | I (binding)     | a server's primary address `A1:P1` | — | mapped `M1`, OTHER-ADDRESS `A2:P2` |
//! | filtering II    | `A1:P1` | change IP and port | answered from `A2:P2` ⇒ endpoint-independent filtering |
//! | filtering III   | `A1:P1` | change port | answered from `A1:P2` ⇒ address-dependent, else address-and-port-dependent |
//! | mapping II      | `A2:P1` | — | `M2 == M1` ⇒ endpoint-independent mapping |
//! | mapping III     | `A2:P2` | — | `M3 == M2` ⇒ address-dependent, else address-and-port-dependent |
//!
//! The filtering tests come first: the mapping tests send to `A2`, which would open the
//! filter for `A2` and make an address-dependent filter look endpoint-independent.
//! Mapping tests are skipped when `M1` is the local address (no translation).
//!
//! Without RFC 5780 (no usable OTHER-ADDRESS), a Binding request to a second server
//! (the comparison test) tells whether the mapping depends on the destination; filtering
//! stays unknown. If every server's test I times out, UDP is blocked.
//!
//! [`NatDiscovery`] picks the tests (a small machine: [`NatDiscovery::poll_test`],
//! [`NatDiscovery::handle_outcome`]); [`classify`] is the pure function from what was
//! observed to the [`NatReport`]. Neither does I/O or reads a clock.
//!
//! [RFC 4787]: https://www.rfc-editor.org/rfc/rfc4787
//! [RFC 5780]: https://www.rfc-editor.org/rfc/rfc5780

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// How a NAT maps one internal address to external ones (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// The same external address for every destination.
    EndpointIndependent,
    /// The external address depends on the destination IP.
    AddressDependent,
    /// The external address depends on the destination IP and port.
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through to a mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filtering {
    /// From anyone.
    EndpointIndependent,
    /// From IPs the internal endpoint has sent to.
    AddressDependent,
    /// From the IP and port pairs the internal endpoint has sent to.
    AddressAndPortDependent,
}

/// The classic NAT type names (RFC 3489 §5), derived from the behaviours.
///
/// A host without translation but behind a filtering firewall is reported by its
/// filtering (`RestrictedCone`, `PortRestrictedCone`) with [`NatReport::behind_nat`]
/// `false`: for a peer trying to reach it, it behaves like that cone NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatType {
    /// No translation (the mapped address is the local one) and no filtering seen.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// The mapping depends on the destination.
    Symmetric,
    /// No STUN server answered at all.
    UdpBlocked,
    /// The answers do not decide (see [`NatReport::notes`]).
    Unknown,
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatType::Open => "open (no NAT)",
            NatType::FullCone => "full cone",
            NatType::RestrictedCone => "restricted cone",
            NatType::PortRestrictedCone => "port-restricted cone",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "UDP blocked",
            NatType::Unknown => "unknown",
        })
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

impl fmt::Display for Filtering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// How the classification was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// RFC 5780 tests against one server with an alternate address.
    Rfc5780,
    /// Mapped addresses from two servers compared (filtering unknown).
    TwoServers,
    /// One server's answer only: tells translation or not, little else.
    SingleServer,
    /// No server answered with a mapped address.
    NoAnswer,
}

/// A Binding success response, as far as classification needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS): our address as the server saw it.
    pub mapped: SocketAddr,
    /// The address the response datagram came from.
    pub source: SocketAddr,
    /// OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address, if it has one.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780 §7.3): where the server says it answered from.
    pub response_origin: Option<SocketAddr>,
}

/// The outcome of one Binding transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A success response.
    Success(BindingResponse),
    /// An error response (its code, e.g. 420 when CHANGE-REQUEST is not understood), or a
    /// success response without a mapped address (`None`).
    Error(Option<u16>),
    /// No answer before the transaction's deadline.
    Timeout,
}

/// Which test a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestKind {
    /// Test I: a plain Binding request to the server at this index of the server list.
    Binding(usize),
    /// Filtering test II: CHANGE-REQUEST with change IP and change port.
    FilteringII,
    /// Filtering test III: CHANGE-REQUEST with change port.
    FilteringIII,
    /// Mapping test II: to the alternate IP, primary port.
    MappingII,
    /// Mapping test III: to the alternate IP and port.
    MappingIII,
    /// A plain Binding request to another server (index in the server list), for the
    /// two-server comparison.
    Comparison(usize),
}

/// A Binding request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Test {
    /// Which test.
    pub kind: TestKind,
    /// Where to send it.
    pub dest: SocketAddr,
    /// CHANGE-REQUEST "change IP" flag.
    pub change_ip: bool,
    /// CHANGE-REQUEST "change port" flag.
    pub change_port: bool,
}

/// Everything observed, the input of [`classify`]. Any combination is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// The local address of the probing socket (a concrete IP, not `0.0.0.0`).
    pub local: SocketAddr,
    /// The server that answered test I and its answer.
    pub primary: Option<(SocketAddr, BindingResponse)>,
    /// Whether any server answered anything (an error response counts).
    pub any_answer: bool,
    /// Filtering test II.
    pub filtering_ii: Option<Outcome>,
    /// Filtering test III.
    pub filtering_iii: Option<Outcome>,
    /// Mapping test II.
    pub mapping_ii: Option<Outcome>,
    /// Mapping test III.
    pub mapping_iii: Option<Outcome>,
    /// The comparison server and its answer.
    pub comparison: Option<(SocketAddr, BindingResponse)>,
}

impl Observations {
    /// Nothing observed yet, from `local`.
    pub fn new(local: SocketAddr) -> Self {
        Self {
            local,
            primary: None,
            any_answer: false,
            filtering_ii: None,
            filtering_iii: None,
            mapping_ii: None,
            mapping_iii: None,
            comparison: None,
        }
    }

    /// The primary server's alternate address if it is usable for RFC 5780: same family,
    /// different IP and different port (RFC 5780 §7.4).
    fn other(&self) -> Option<SocketAddr> {
        let (server, r) = self.primary?;
        r.other_address
            .filter(|o| o.is_ipv4() == server.is_ipv4() && o.ip() != server.ip() && o.port() != server.port())
    }

    fn translated(&self) -> Option<bool> {
        self.primary.map(|(_, r)| r.mapped != self.local)
    }
}

/// The result of NAT discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// The NAT type.
    pub nat_type: NatType,
    /// The mapping behaviour; `None` if undecided.
    pub mapping: Option<Mapping>,
    /// The filtering behaviour; `None` if undecided.
    pub filtering: Option<Filtering>,
    /// Our address as the (primary) server saw it.
    pub public_addr: Option<SocketAddr>,
    /// The probing socket's local address.
    pub local_addr: SocketAddr,
    /// Whether addresses are translated (mapped ≠ local); `None` without an answer.
    pub behind_nat: Option<bool>,
    /// The server whose test I answer is used.
    pub server: Option<SocketAddr>,
    /// How the classification was made.
    pub method: Method,
    /// What could not be decided and why, for humans.
    pub notes: Vec<String>,
}

/// Classifies what was observed. Pure and total: any [`Observations`] give a report.
pub fn classify(obs: &Observations) -> NatReport {
    let mut notes = Vec::new();
    let Some((server, first)) = obs.primary else {
        let nat_type = if obs.any_answer {
            notes.push("the STUN servers answered with errors only".to_string());
            NatType::Unknown
        } else {
            notes.push("no STUN server answered: UDP is blocked or the servers are down".to_string());
            NatType::UdpBlocked
        };
        return NatReport {
            nat_type,
            mapping: None,
            filtering: None,
            public_addr: None,
            local_addr: obs.local,
            behind_nat: None,
            server: None,
            method: Method::NoAnswer,
            notes,
        };
    };
    let translated = first.mapped != obs.local;
    let other = obs.other();
    if first.other_address.is_some() && other.is_none() {
        notes.push(
            "the server's OTHER-ADDRESS does not differ in both IP and port: RFC 5780 tests skipped".into(),
        );
    }
    let filtering = other.and_then(|other| filtering(obs, server, other, &mut notes));
    // `dependent`: the mapping is known to vary with the destination, even if which kind
    // of dependence is undecided.
    let (mapping, dependent, method) = if !translated {
        let m = if other.is_some() { Method::Rfc5780 } else { Method::SingleServer };
        (Some(Mapping::EndpointIndependent), false, m)
    } else if other.is_some() {
        let (m, d) = mapping_rfc5780(obs, first.mapped, &mut notes);
        (m, d, Method::Rfc5780)
    } else if let Some((srv2, second)) = obs.comparison {
        let (m, d) = mapping_two_servers(server, first.mapped, srv2, second.mapped, &mut notes);
        (m, d, Method::TwoServers)
    } else {
        notes.push("one server without RFC 5780: mapping undecided (give a second --stun server)".into());
        (None, false, Method::SingleServer)
    };
    if other.is_none() && translated {
        notes.push("filtering undecided: the server does not support RFC 5780".into());
    }
    let nat_type = match (mapping, filtering) {
        _ if dependent => NatType::Symmetric,
        (Some(Mapping::AddressDependent | Mapping::AddressAndPortDependent), _) => NatType::Symmetric,
        (Some(Mapping::EndpointIndependent), f) if !translated => match f {
            None | Some(Filtering::EndpointIndependent) => NatType::Open,
            Some(Filtering::AddressDependent) => NatType::RestrictedCone,
            Some(Filtering::AddressAndPortDependent) => NatType::PortRestrictedCone,
        },
        (Some(Mapping::EndpointIndependent), Some(f)) => match f {
            Filtering::EndpointIndependent => NatType::FullCone,
            Filtering::AddressDependent => NatType::RestrictedCone,
            Filtering::AddressAndPortDependent => NatType::PortRestrictedCone,
        },
        (Some(Mapping::EndpointIndependent), None) | (None, _) => NatType::Unknown,
    };
    if nat_type == NatType::Unknown && notes.is_empty() {
        notes.push("the tests that would decide were not run".into());
    }
    NatReport {
        nat_type,
        mapping,
        filtering,
        public_addr: Some(first.mapped),
        local_addr: obs.local,
        behind_nat: Some(translated),
        server: Some(server),
        method,
        notes,
    }
}

/// Filtering from tests II and III (RFC 5780 §4.4). A response only counts if it came
/// from where the CHANGE-REQUEST asked: a server answering from its primary address
/// ignored the request and proves nothing.
fn filtering(
    obs: &Observations,
    server: SocketAddr,
    other: SocketAddr,
    notes: &mut Vec<String>,
) -> Option<Filtering> {
    match obs.filtering_ii? {
        Outcome::Success(r) if r.source == other => Some(Filtering::EndpointIndependent),
        Outcome::Success(r) => {
            notes.push(format!(
                "filtering test II: the answer came from {} instead of {other}: CHANGE-REQUEST not honoured",
                r.source
            ));
            None
        }
        Outcome::Error(code) => {
            notes.push(format!("filtering test II refused (error {code:?}): CHANGE-REQUEST not supported"));
            None
        }
        Outcome::Timeout => match obs.filtering_iii? {
            Outcome::Success(r) if r.source.ip() == server.ip() && r.source.port() == other.port() => {
                Some(Filtering::AddressDependent)
            }
            Outcome::Success(r) => {
                notes.push(format!(
                    "filtering test III: the answer came from {} instead of {}:{}: CHANGE-REQUEST not honoured",
                    r.source,
                    server.ip(),
                    other.port()
                ));
                None
            }
            Outcome::Error(code) => {
                notes.push(format!("filtering test III refused (error {code:?})"));
                None
            }
            Outcome::Timeout => Some(Filtering::AddressAndPortDependent),
        },
    }
}

/// Mapping from tests II and III (RFC 5780 §4.3); returns the behaviour and whether the
/// mapping is known to depend on the destination.
fn mapping_rfc5780(obs: &Observations, m1: SocketAddr, notes: &mut Vec<String>) -> (Option<Mapping>, bool) {
    match obs.mapping_ii {
        Some(Outcome::Success(r2)) if r2.mapped == m1 => (Some(Mapping::EndpointIndependent), false),
        Some(Outcome::Success(r2)) => match obs.mapping_iii {
            Some(Outcome::Success(r3)) if r3.mapped == r2.mapped => (Some(Mapping::AddressDependent), true),
            Some(Outcome::Success(_)) => (Some(Mapping::AddressAndPortDependent), true),
            _ => {
                notes.push(
                    "mapping test III unanswered: the mapping depends on the destination, kind undecided"
                        .into(),
                );
                (None, true)
            }
        },
        _ => {
            notes.push("mapping test II unanswered (the server's alternate address is unreachable)".into());
            (None, false)
        }
    }
}

/// Mapping from two servers' answers. Equal mapped addresses from servers on different
/// IPs prove endpoint independence; different ones prove dependence, and its kind only if
/// the servers share an IP (then only the port differed).
fn mapping_two_servers(
    s1: SocketAddr,
    m1: SocketAddr,
    s2: SocketAddr,
    m2: SocketAddr,
    notes: &mut Vec<String>,
) -> (Option<Mapping>, bool) {
    match (m1 == m2, s1.ip() == s2.ip()) {
        (true, false) => (Some(Mapping::EndpointIndependent), false),
        (true, true) => {
            notes.push(
                "the two servers share an IP: endpoint-independent and address-dependent mapping look alike"
                    .into(),
            );
            (None, false)
        }
        (false, true) => (Some(Mapping::AddressAndPortDependent), true),
        (false, false) => {
            notes.push("the mapping differs between the two servers: dependent, kind undecided".into());
            (None, true)
        }
    }
}

/// What the machine does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Run(TestKind),
    Done,
}

/// The test sequence as a machine: [`poll_test`](Self::poll_test) gives the request to
/// send (the same one until its outcome is handed to
/// [`handle_outcome`](Self::handle_outcome)); when it gives `None`,
/// [`report`](Self::report) is final. One test at a time, in the order of the module docs.
#[derive(Debug, Clone)]
pub struct NatDiscovery {
    servers: Vec<SocketAddr>,
    obs: Observations,
    step: Step,
}

impl NatDiscovery {
    /// Discovery from `local` (a concrete local address) against `servers`, the first
    /// preferred. With no server, it is done at once (and reports `UdpBlocked`).
    pub fn new(servers: Vec<SocketAddr>, local: SocketAddr) -> Self {
        let step = if servers.is_empty() { Step::Done } else { Step::Run(TestKind::Binding(0)) };
        Self { servers, obs: Observations::new(local), step }
    }

    /// The test to run now, or `None` when done.
    pub fn poll_test(&self) -> Option<Test> {
        let Step::Run(kind) = self.step else { return None };
        let plain = |dest| Some(Test { kind, dest, change_ip: false, change_port: false });
        match kind {
            TestKind::Binding(i) | TestKind::Comparison(i) => plain(*self.servers.get(i)?),
            TestKind::FilteringII | TestKind::FilteringIII => {
                let (server, _) = self.obs.primary?;
                Some(Test { kind, dest: server, change_ip: kind == TestKind::FilteringII, change_port: true })
            }
            TestKind::MappingII => {
                let ((server, _), other) = (self.obs.primary?, self.obs.other()?);
                plain(SocketAddr::new(other.ip(), server.port()))
            }
            TestKind::MappingIII => plain(self.obs.other()?),
        }
    }

    /// Takes the outcome of the test [`poll_test`](Self::poll_test) gave. Ignored when
    /// done.
    pub fn handle_outcome(&mut self, outcome: Outcome) {
        let Step::Run(kind) = self.step else { return };
        if !matches!(outcome, Outcome::Timeout) {
            self.obs.any_answer = true;
        }
        self.step = match kind {
            TestKind::Binding(i) => match outcome {
                Outcome::Success(r) => match self.servers.get(i) {
                    Some(&server) => {
                        self.obs.primary = Some((server, r));
                        if self.obs.other().is_some() {
                            Step::Run(TestKind::FilteringII)
                        } else {
                            self.next_comparison(i + 1)
                        }
                    }
                    None => Step::Done,
                },
                _ if i + 1 < self.servers.len() => Step::Run(TestKind::Binding(i + 1)),
                _ => Step::Done,
            },
            TestKind::FilteringII => {
                self.obs.filtering_ii = Some(outcome);
                match outcome {
                    Outcome::Timeout => Step::Run(TestKind::FilteringIII),
                    _ => self.mapping_tests(),
                }
            }
            TestKind::FilteringIII => {
                self.obs.filtering_iii = Some(outcome);
                self.mapping_tests()
            }
            TestKind::MappingII => {
                self.obs.mapping_ii = Some(outcome);
                match (outcome, self.obs.primary) {
                    (Outcome::Success(r2), Some((_, r1))) if r2.mapped != r1.mapped => {
                        Step::Run(TestKind::MappingIII)
                    }
                    _ => Step::Done,
                }
            }
            TestKind::MappingIII => {
                self.obs.mapping_iii = Some(outcome);
                Step::Done
            }
            TestKind::Comparison(j) => match (outcome, self.servers.get(j)) {
                (Outcome::Success(r), Some(&s)) => {
                    self.obs.comparison = Some((s, r));
                    Step::Done
                }
                _ => self.next_comparison(j + 1),
            },
        };
    }

    /// Mapping tests, unless there is no translation (nothing to test).
    fn mapping_tests(&self) -> Step {
        if self.obs.translated() == Some(true) {
            Step::Run(TestKind::MappingII)
        } else {
            Step::Done
        }
    }

    /// The next server from index `from` usable for the comparison (not the primary's
    /// address), if a comparison can tell anything (there is translation).
    fn next_comparison(&self, from: usize) -> Step {
        let Some((primary, _)) = self.obs.primary else { return Step::Done };
        if self.obs.translated() != Some(true) {
            return Step::Done;
        }
        match self.servers.iter().enumerate().skip(from).find(|(_, s)| **s != primary) {
            Some((j, _)) => Step::Run(TestKind::Comparison(j)),
            None => Step::Done,
        }
    }

    /// Whether the sequence is over.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// What was observed so far.
    pub fn observations(&self) -> &Observations {
        &self.obs
    }

    /// The classification of what was observed so far (final once done).
    pub fn report(&self) -> NatReport {
        classify(&self.obs)
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
