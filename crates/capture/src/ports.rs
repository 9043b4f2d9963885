//! The two list syntaxes the init step takes from the injector, which passes pod annotations
//! through unchanged: ports (`"22,5432,8000-8010"`) and IPv4 networks (`"10.0.0.0/8,192.168.1.7"`).
//!
//! Both are strict: an empty item, port 0, a reversed range, an IPv6 network or a network with
//! host bits set is an error that names the item and says what to write instead, because a typo
//! here silently sends (or stops sending) an app's traffic through the proxy. An empty or
//! all-blank string is an empty list (an annotation set to `""`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A bad item in a port or network list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty item in {list:?}: separate items with single commas, as in `22,5432,8000-8010`")]
    EmptyItem { list: String },
    #[error("{item:?} is not a port: use a number from 1 to 65535 or a range such as 8000-8010")]
    BadPort { item: String },
    #[error("port range {item:?} ends before it starts: write the lower port first")]
    ReversedRange { item: String },
    #[error(
        "{item:?} is not an IPv4 address or network: use a form such as 10.0.0.0/8 or 192.168.1.7"
    )]
    BadCidr { item: String },
    #[error(
        "{item:?} is IPv6: only IPv4 traffic is captured (no ip6tables rules), so only IPv4 \
         networks can be skipped"
    )]
    Ipv6Cidr { item: String },
    #[error("{item:?} has bits set past its /{prefix}: did you mean {network}?")]
    HostBits {
        item: String,
        prefix: u8,
        network: Cidr,
    },
}

/// One port or an inclusive range of ports, never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// One port; `None` for port 0, which no TCP connection can be addressed to.
    pub fn single(port: u16) -> Option<Self> {
        (port != 0).then_some(Self {
            first: port,
            last: port,
        })
    }

    /// `first..=last`; `None` for port 0 or a reversed range.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first != 0 && first <= last).then_some(Self { first, last })
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// How many of `-m multiport`'s 15 slots this item takes (a range takes two).
    pub(crate) fn slots(&self) -> usize {
        if self.first == self.last { 1 } else { 2 }
    }

    /// The form `--dports` takes: `8080` or `8000:8010`.
    pub(crate) fn iptables(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }
}

/// The form the annotations use: `8080` or `8000-8010`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = ParseError;

    fn from_str(item: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::BadPort {
            item: item.to_owned(),
        };
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(p) => Ok(p),
        };
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(item)?;
                (p, p)
            }
        };
        PortRange::new(first, last).ok_or_else(|| ParseError::ReversedRange {
            item: item.to_owned(),
        })
    }
}

/// Parses `"22,5432,8000-8010"`. Blanks around items are allowed; an empty string is no ports.
pub fn parse_ports(list: &str) -> Result<Vec<PortRange>, ParseError> {
    parse_list(list, |item| item.parse())
}

/// An IPv4 network in CIDR form, its address having no bits set past the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// `None` when `prefix > 32` or `addr` has bits set past the prefix.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32 && mask(addr, prefix) == addr).then_some(Self { addr, prefix })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let kept = match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    };
    Ipv4Addr::from(kept)
}

/// Always with its prefix (`10.0.0.0/8`, `192.168.1.7/32`): the form `iptables-save` prints.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    fn from_str(item: &str) -> Result<Self, ParseError> {
        let owned = || item.to_owned();
        if item.contains(':') {
            return Err(ParseError::Ipv6Cidr { item: owned() });
        }
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)),
            None => (item, Some(32)),
        };
        let (Ok(addr), Some(prefix)) = (addr.parse::<Ipv4Addr>(), prefix) else {
            return Err(ParseError::BadCidr { item: owned() });
        };
        Cidr::new(addr, prefix).ok_or(ParseError::HostBits {
            item: owned(),
            prefix,
            network: Cidr {
                addr: mask(addr, prefix),
                prefix,
            },
        })
    }
}

/// Parses `"10.0.0.0/8,192.168.1.7"` (a bare address is a /32).
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, ParseError> {
    parse_list(list, |item| item.parse())
}

fn parse_list<T>(
    list: &str,
    item: impl Fn(&str) -> Result<T, ParseError>,
) -> Result<Vec<T>, ParseError> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|raw| match raw.trim() {
            "" => Err(ParseError::EmptyItem {
                list: list.to_owned(),
            }),
            trimmed => item(trimmed),
        })
        .collect()
}
