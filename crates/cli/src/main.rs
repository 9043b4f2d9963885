//! `onemesh`: runs the mesh and its reference platform on this machine (`up`, `down`) and shows
//! the mesh from one place (`status`, `check`, `stat`, `edges`, `routes`, `top`, `tap`,
//! `dashboard`: the control plane's metrics window and tap, see [`observe`]; `authz`,
//! `identity`), and
//! gives the operator the mesh's trust (`identity trust`, `rotate-anchor`, `rotate-issuer`,
//! `revoke`: calls to the control plane's Admin service, see [`trust`]), and on Kubernetes
//! prints the mesh's manifests (`install`, `uninstall`) and injects proxies into YAML
//! (`inject`, `uninject`). `audit verify` and `audit query` read the decision log (see
//! [`audit`]).
//!
//! Exit codes scripts can rely on: 0 success; 1 the command ran and found a problem (a failed
//! check, an unknown workload, the mesh not running); 2 a usage error (bad flags).

mod audit;
mod authz;
mod cluster;
mod commands;
mod http;
mod inject;
mod install;
mod isolate;
mod layout;
mod mesh;
mod observe;
mod supervise;
mod table;
mod traffic;
mod trust;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "onemesh",
    version,
    about = "A service mesh with automatic mTLS, policy and golden metrics"
)]
struct Cli {
    /// Where `onemesh up` keeps its CA, tokens, data and running layout.
    #[arg(
        long,
        global = true,
        env = "ONEMESH_STATE_DIR",
        default_value = ".onemesh"
    )]
    state_dir: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Wide,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and every workload of mesh.yaml with its proxy, until Ctrl-C or `down`.
    Up(up::Args),
    /// Stop what `onemesh up` started.
    Down,
    /// The running layout: every workload's identity, ports, pids and readiness.
    Status,
    /// Verify the control plane, every proxy, certificates, clocks and policy; exit 1 on any failure.
    /// With --kubernetes (or --kubeconfig): the mesh on a Kubernetes cluster.
    Check {
        /// Check the mesh on the Kubernetes cluster of $KUBECONFIG (or ~/.kube/config, or the pod's).
        #[arg(long)]
        kubernetes: bool,
        /// Check the mesh on this kubeconfig's cluster.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Success rate, requests/s and latency percentiles of each workload over a window (from
    /// the control plane's metrics window; `-o wide` adds denials and TCP traffic).
    Stat {
        /// A namespace, or `namespace/workload`, to show only that.
        target: Option<String>,
        /// The window: e.g. 60s, 5m, 1h (at most the control plane's retention).
        #[arg(long, default_value = "60s")]
        window: String,
    },
    /// Who calls whom: identities, mTLS, requests/s, success rate, p99, denials.
    Edges {
        namespace: Option<String>,
        #[arg(long, default_value = "60s")]
        window: String,
    },
    /// Each route (of one service: `name.namespace`): match, backends and weights, requests/s,
    /// success rate, p99 and retries; `-o wide` adds its timeout and retry policy.
    Routes {
        service: Option<String>,
        #[arg(long, default_value = "60s")]
        window: String,
    },
    /// The busiest paths of a workload right now, live from tap (redrawn every second).
    Top(observe::TapArgs),
    /// Live requests of a workload (metadata only, masked in the proxy: no bodies, no card
    /// numbers, no secret headers), streamed through the control plane.
    Tap(observe::TapArgs),
    /// The dashboard's login link; with --kubernetes, a port-forward to it on the cluster.
    Dashboard {
        /// Forward to the control plane on the Kubernetes cluster of $KUBECONFIG (kubectl, or
        /// $ONEMESH_KUBECTL), reading the token from the Secret onemesh-dashboard-token.
        #[arg(long)]
        kubernetes: bool,
        /// The control plane's namespace.
        #[arg(long, default_value = "onemesh")]
        namespace: String,
        /// The local port to forward.
        #[arg(long, default_value_t = 8084)]
        port: u16,
    },
    /// The authorization policies in force on a workload (`authz <workload>`), why a call is
    /// allowed or denied (`explain`), and what a policy change would break (`diff`).
    Authz(AuthzArgs),
    /// Endpoints as the callers' circuit breakers see them: healthy, failing, ejected or on
    /// probation (read from every proxy's /metrics); optionally only one service's
    /// (`<service>.<namespace>`, or `<service>` for every namespace's).
    Endpoints { service: Option<String> },
    /// Identities and trust: a workload's certificate (`identity <workload>`), or, with no
    /// workload, the mesh's anchors, issuer and every proxy's leaf; rotation and revocation.
    Identity(IdentityArgs),
    /// Print the Kubernetes manifests of the mesh: `onemesh install | kubectl apply --server-side -f -`.
    Install(install::InstallArgs),
    /// Print what `install` made, for `onemesh uninstall | kubectl delete -f -`.
    Uninstall,
    /// Add the mesh's proxy to the pods of Kubernetes YAML (as the control plane's webhook
    /// does): `onemesh inject app.yaml | kubectl apply -f -`.
    Inject(inject::InjectArgs),
    /// Remove what `inject` (or the webhook) added, restoring the app's probes.
    Uninject(inject::InjectArgs),
    /// The decision log (every proxy's authorization decisions, hash-chained and signed by the
    /// control plane): `verify` it, or `query` it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

/// `onemesh identity [<workload> | trust | rotate-anchor | rotate-issuer | revoke <id>]`.
/// A workload whose name is one of the subcommands' is given as `namespace/name`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuthzArgs {
    /// A workload (`name` or `namespace/name`): its policies, their modes and what they allow.
    workload: Option<String>,
    #[command(subcommand)]
    command: Option<AuthzCommand>,
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Why a call is allowed or denied, as the destination's proxy decides it on its live policy,
    /// and for a denial the smallest change that allows it.
    Explain(authz::ExplainArgs),
    /// Before applying new policies: every edge whose decision would change and the traffic it
    /// carries now; exit code 1 when live traffic would be denied.
    Diff(authz::DiffArgs),
}

/// A workload whose name is one of the subcommands' is given as `namespace/name`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct IdentityArgs {
    /// A workload (`name` or `namespace/name`): the certificate its proxy holds now.
    workload: Option<String>,
    #[command(subcommand)]
    command: Option<IdentityCommand>,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Anchors, issuer and every connected proxy's leaf with expiry (the default with no workload).
    Trust,
    /// Rotate the trust anchor without an outage, to the end: prints each step as it goes.
    RotateAnchor {
        /// How long each step waits for every connected proxy (e.g. 90s, 5m, 1h).
        #[arg(long, default_value = "5m", value_parser = trust::parse_deadline)]
        deadline: Duration,
        /// Rotate even when proxies of the layout are not connected (they will not follow).
        #[arg(long)]
        force: bool,
    },
    /// Rotate the issuer now (the control plane also does it by itself at 70 % of its life).
    RotateIssuer {
        /// How long each step waits for every connected proxy (e.g. 90s, 5m, 1h).
        #[arg(long, default_value = "5m", value_parser = trust::parse_deadline)]
        deadline: Duration,
    },
    /// Never certify this SPIFFE id again (leaves already issued stay valid until they expire).
    Revoke {
        /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let dir = &cli.state_dir;
        match cli.command {
            Command::Up(args) => up::run(args, dir).await,
            Command::Down => commands::down(dir).await,
            Command::Status => commands::status(dir, cli.output).await,
            Command::Check {
                kubernetes,
                kubeconfig,
            } => {
                if kubernetes || kubeconfig.is_some() {
                    commands::check_kubernetes(kubeconfig.as_deref()).await
                } else {
                    commands::check(dir).await
                }
            }
            Command::Install(args) => install::manifests(&args).map(|text| {
                print!("{text}");
                true
            }),
            Command::Uninstall => install::uninstall_manifests().map(|text| {
                print!("{text}");
                true
            }),
            Command::Audit(command) => audit::run(dir, command, cli.output),
            Command::Inject(args) => inject::run(&args, inject::Direction::Inject),
            Command::Uninject(args) => inject::run(&args, inject::Direction::Uninject),
            Command::Stat { target, window } => {
                observe::stat(dir, target, &window, cli.output).await
            }
            Command::Edges { namespace, window } => {
                observe::edges(dir, namespace, &window, cli.output).await
            }
            Command::Routes { service, window } => {
                traffic::routes(dir, service, &window, cli.output).await
            }
            Command::Top(args) => observe::top(dir, &args, cli.output).await,
            Command::Tap(args) => observe::tap(dir, &args, cli.output).await,
            Command::Dashboard {
                kubernetes,
                namespace,
                port,
            } => observe::dashboard(dir, kubernetes, &namespace, port).await,
            Command::Authz(AuthzArgs {
                workload: Some(workload),
                ..
            }) => commands::authz(dir, &workload, cli.output).await,
            Command::Authz(AuthzArgs { command, .. }) => match command {
                Some(AuthzCommand::Explain(args)) => authz::explain(dir, &args, cli.output).await,
                Some(AuthzCommand::Diff(args)) => authz::diff(dir, &args, cli.output).await,
                None => Err(anyhow::anyhow!(
                    "name a workload (`onemesh authz <workload>`) or a subcommand (explain, diff)"
                )),
            },
            Command::Endpoints { service } => traffic::endpoints(dir, service, cli.output).await,
            Command::Identity(IdentityArgs {
                workload: Some(workload),
                ..
            }) => commands::identity(dir, &workload, cli.output).await,
            Command::Identity(IdentityArgs { command, .. }) => match command {
                None | Some(IdentityCommand::Trust) => trust::show(dir, cli.output).await,
                Some(IdentityCommand::RotateAnchor { deadline, force }) => {
                    trust::rotate(dir, trust::Rotation::Anchor, deadline, force).await
                }
                Some(IdentityCommand::RotateIssuer { deadline }) => {
                    trust::rotate(dir, trust::Rotation::Issuer, deadline, false).await
                }
                Some(IdentityCommand::Revoke { id }) => trust::revoke(dir, &id).await,
            },
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
