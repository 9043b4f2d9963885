//! The command line of `onemesh-proxy init`, parsed by hand (the proxy binary has no argument
//! library: it is configured by environment variables, and this is its only subcommand), and
//! written back ([`InitArgs::to_args`]) for the injector, which builds the init container's
//! arguments from a pod's annotations: what it writes is what this parses.

use crate::ports::{ParseError, parse_cidrs, parse_ports};
use crate::{Backend, Rules};

/// `onemesh-proxy init --help`.
pub const USAGE: &str = "\
usage: onemesh-proxy init [options]

Installs the iptables nat rules that send this network namespace's TCP through its proxy:
inbound TCP to the inbound port, outbound TCP to the outbound port, except the proxy's own
connections (its uid), loopback, and the skipped ports and networks. Running it again replaces
the rules (one copy of each); --remove deletes them. Needs CAP_NET_ADMIN and CAP_NET_RAW.

options:
  --proxy-uid N              uid the proxy runs as; its connections are never captured [2102]
  --proxy-gid N              also exempt connections made by this gid [none]
  --inbound-port N           where inbound TCP is redirected [4143]
  --outbound-port N          where outbound TCP is redirected [4140]
  --admin-port N             the proxy's admin port, never captured inbound [4191]
  --control-admin-port N     the proxy's control-only admin port (tap), never captured inbound [4190]
  --skip-inbound-ports LIST  inbound ports that reach the app directly, e.g. 22,8000-8010
                             (the inbound and admin ports are always skipped)
  --skip-outbound-ports LIST outbound ports that go direct, e.g. 5432,6379
  --skip-outbound-cidrs LIST outbound IPv4 networks that go direct, e.g. 10.96.0.0/12,169.254.169.254
  --no-inbound-capture       capture outbound traffic only
  --backend auto|nft|legacy  which iptables to use; auto prefers one that already has rules,
                             then nft [auto]
  --remove                   delete the rules instead of installing them
  --dry-run                  print the iptables-restore input and change nothing
  -h, --help                 this text

Values can also be given as --flag=value. Exit status: 0 done, 1 failed (the reason on stderr).
";

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// [`Backend::detect`].
    #[default]
    Auto,
    Fixed(Backend),
}

impl BackendChoice {
    pub fn resolve(self) -> Backend {
        match self {
            BackendChoice::Auto => Backend::detect(),
            BackendChoice::Fixed(b) => b,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Fixed(b) => b.name(),
        }
    }
}

/// What `init` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitCommand {
    Help,
    Run(InitArgs),
}

/// A parsed `onemesh-proxy init` command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitArgs {
    pub rules: Rules,
    pub backend: BackendChoice,
    pub remove: bool,
    pub dry_run: bool,
}

/// A bad `onemesh-proxy init` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown argument {arg:?} for `onemesh-proxy init`: see `onemesh-proxy init --help`")]
    Unknown { arg: String },
    #[error("{flag} needs a value: see `onemesh-proxy init --help`")]
    MissingValue { flag: &'static str },
    #[error("{flag} takes no value (got {value:?})")]
    UnexpectedValue { flag: &'static str, value: String },
    #[error("{flag} {value:?}: expected a number from {min} to {max}")]
    BadNumber {
        flag: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error(
        "--proxy-uid 0 would exempt every process running as root from capture: run the proxy as \
         a uid of its own (default 2102)"
    )]
    RootProxyUid,
    #[error("{flag}: {source}")]
    BadList {
        flag: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("--backend {value:?}: use auto, nft or legacy")]
    BadBackend { value: String },
}

/// Parses the arguments after `init`.
pub fn parse_init_args<I>(args: I) -> Result<InitCommand, ArgsError>
where
    I: IntoIterator<Item = String>,
{
    let mut parsed = InitArgs::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let Some(flag) = FLAGS.iter().copied().find(|f| *f == name) else {
            return Err(ArgsError::Unknown { arg });
        };
        let switch = |on: &mut bool| match &inline {
            Some(v) => Err(ArgsError::UnexpectedValue {
                flag,
                value: v.clone(),
            }),
            None => {
                *on = true;
                Ok(())
            }
        };
        match flag {
            "-h" | "--help" => return Ok(InitCommand::Help),
            "--remove" => switch(&mut parsed.remove)?,
            "--dry-run" => switch(&mut parsed.dry_run)?,
            "--no-inbound-capture" => {
                let mut off = false;
                switch(&mut off)?;
                parsed.rules.capture_inbound = !off;
            }
            _ => {
                let value = match inline {
                    Some(v) => v,
                    None => args.next().ok_or(ArgsError::MissingValue { flag })?,
                };
                set(&mut parsed, flag, value)?;
            }
        }
    }
    Ok(InitCommand::Run(parsed))
}

const FLAGS: [&str; 15] = [
    "-h",
    "--help",
    "--proxy-uid",
    "--proxy-gid",
    "--inbound-port",
    "--outbound-port",
    "--admin-port",
    "--control-admin-port",
    "--skip-inbound-ports",
    "--skip-outbound-ports",
    "--skip-outbound-cidrs",
    "--no-inbound-capture",
    "--backend",
    "--remove",
    "--dry-run",
];

fn set(parsed: &mut InitArgs, flag: &'static str, value: String) -> Result<(), ArgsError> {
    let rules = &mut parsed.rules;
    let list = |source| ArgsError::BadList { flag, source };
    match flag {
        "--proxy-uid" => {
            rules.proxy_uid = id(flag, &value)?;
            if rules.proxy_uid == 0 {
                return Err(ArgsError::RootProxyUid);
            }
        }
        "--proxy-gid" => rules.proxy_gid = Some(id(flag, &value)?),
        "--inbound-port" => rules.inbound_port = port(flag, &value)?,
        "--outbound-port" => rules.outbound_port = port(flag, &value)?,
        "--admin-port" => rules.admin_port = port(flag, &value)?,
        "--control-admin-port" => rules.control_admin_port = port(flag, &value)?,
        "--skip-inbound-ports" => rules.skip_inbound_ports = parse_ports(&value).map_err(list)?,
        "--skip-outbound-ports" => rules.skip_outbound_ports = parse_ports(&value).map_err(list)?,
        "--skip-outbound-cidrs" => rules.skip_outbound_cidrs = parse_cidrs(&value).map_err(list)?,
        "--backend" => {
            parsed.backend = match value.as_str() {
                "auto" => BackendChoice::Auto,
                "nft" => BackendChoice::Fixed(Backend::Nft),
                "legacy" => BackendChoice::Fixed(Backend::Legacy),
                _ => return Err(ArgsError::BadBackend { value }),
            }
        }
        // FLAGS and this match list the same flags; the switches are handled by the caller.
        _ => return Err(ArgsError::Unknown { arg: value }),
    }
    Ok(())
}

fn id(flag: &'static str, value: &str) -> Result<u32, ArgsError> {
    // uid_t is 32 bits, and (uid_t)-1 means "no change" to the kernel: never a real owner.
    number(flag, value, 0, u32::MAX - 1)
}

fn port(flag: &'static str, value: &str) -> Result<u16, ArgsError> {
    number(flag, value, 1, u32::from(u16::MAX)).map(|p| p as u16)
}

fn number(flag: &'static str, value: &str, min: u32, max: u32) -> Result<u32, ArgsError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ArgsError::BadNumber {
            flag,
            value: value.to_owned(),
            min,
            max,
        })
}

impl InitArgs {
    /// The arguments (after `init`) that parse back to `self`; defaults are left out, so the
    /// injector's init container lists only what a pod changed.
    pub fn to_args(&self) -> Vec<String> {
        let d = Rules::default();
        let r = &self.rules;
        let mut out = Vec::new();
        let mut pair = |flag: &str, value: String| {
            out.push(flag.to_owned());
            out.push(value);
        };
        if r.proxy_uid != d.proxy_uid {
            pair("--proxy-uid", r.proxy_uid.to_string());
        }
        if let Some(gid) = r.proxy_gid {
            pair("--proxy-gid", gid.to_string());
        }
        if r.inbound_port != d.inbound_port {
            pair("--inbound-port", r.inbound_port.to_string());
        }
        if r.outbound_port != d.outbound_port {
            pair("--outbound-port", r.outbound_port.to_string());
        }
        if r.admin_port != d.admin_port {
            pair("--admin-port", r.admin_port.to_string());
        }
        if r.control_admin_port != d.control_admin_port {
            pair("--control-admin-port", r.control_admin_port.to_string());
        }
        let join = |items: Vec<String>| items.join(",");
        if !r.skip_inbound_ports.is_empty() {
            pair(
                "--skip-inbound-ports",
                join(
                    r.skip_inbound_ports
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            );
        }
        if !r.skip_outbound_ports.is_empty() {
            pair(
                "--skip-outbound-ports",
                join(
                    r.skip_outbound_ports
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            );
        }
        if !r.skip_outbound_cidrs.is_empty() {
            pair(
                "--skip-outbound-cidrs",
                join(
                    r.skip_outbound_cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            );
        }
        if self.backend != BackendChoice::Auto {
            pair("--backend", self.backend.as_str().to_owned());
        }
        if !r.capture_inbound {
            out.push("--no-inbound-capture".to_owned());
        }
        if self.remove {
            out.push("--remove".to_owned());
        }
        if self.dry_run {
            out.push("--dry-run".to_owned());
        }
        out
    }
}
