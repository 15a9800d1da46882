//! `cloudphone-control`: serve the control plane, or run an admin command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloudphone_control::config::ControlConfig;

#[derive(Parser)]
#[command(
    name = "cloudphone-control",
    version,
    about = "cloudphone control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML); `CLOUDPHONE_*` variables override it.
    #[arg(long, global = true, env = "CLOUDPHONE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the file.
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Listen address of the node-facing gRPC service, overriding `[nodes].listen`.
    #[arg(long, global = true)]
    nodes_listen: Option<std::net::SocketAddr>,
    /// `serve`: once the listeners are bound, write their addresses here as
    /// `{"http": "IP:PORT", "grpc": "IP:PORT"}` (grpc = the node-facing listener; plus
    /// `"live_api"` when `[live_api].listen` is set), for listen addresses with port 0.
    #[arg(long, global = true)]
    ready_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage a tenant's IAM users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage a tenant's projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Manage a tenant's streaming domains (usage is reported per domain).
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Manage a tenant's AK/SK pairs (usage API signatures).
    AccessKey {
        #[command(subcommand)]
        command: AccessKeyCommand,
    },
    /// Inspect the fleet's nodes, enroll and revoke them.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List every node control knows with its last recorded status; prints JSON.
    List {
        /// Print JSON (the only format; accepted so scripts can say what they expect).
        #[arg(long)]
        json: bool,
    },
    /// Print a single-use join token for one new node (its `[control].join_token`); prints
    /// JSON `{"join_token", "expires_at_ms"}`.
    JoinToken {
        /// How long the token may wait for its node: `30m`, `1h` (default), up to `7d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Unpin a node id from its certificate so it can enroll again; prints JSON.
    Revoke {
        /// The node id.
        node_id: String,
    },
    /// Write a control-role client certificate, its key and the CA into a directory, for
    /// operators' tools (ListNodes, or calling a node directly); prints JSON.
    ClientCert {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Add a streaming domain to a tenant; prints JSON.
    Create {
        /// The tenant's IAM domain.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        domain: String,
        /// Bill cloud-phone sessions under this domain from now on.
        #[arg(long)]
        default: bool,
    },
    /// List a tenant's streaming domains, deleted ones included; prints JSON.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum AccessKeyCommand {
    /// Create a pair for a user; prints the secret once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
    },
    /// List a tenant's keys (no secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Delete one of a tenant's keys.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        access: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user to an existing tenant; prints JSON.
    Create(Login),
}

/// A user's name and password within its tenant (IAM domain).
#[derive(clap::Args)]
struct Login {
    #[arg(long)]
    domain: String,
    #[arg(long)]
    user: String,
    /// The user's password (or set CLOUDPHONE_TENANT_PASSWORD to keep it out of `ps`).
    #[arg(long, env = "CLOUDPHONE_TENANT_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Add a project to an existing tenant; prints JSON.
    Create {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        project: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (IAM domain) with its first user and project; prints JSON.
    Create {
        #[command(flatten)]
        login: Login,
        #[arg(long)]
        project: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = ControlConfig::load(cli.config.as_deref(), |name| std::env::var(name).ok())
        .context("loading configuration")?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(listen) = cli.nodes_listen {
        config.nodes.listen = listen;
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Tenant {
            command:
                TenantCommand::Create {
                    login:
                        Login {
                            domain,
                            user,
                            password,
                        },
                    project,
                },
        } => {
            let created = cloudphone_control::admin::create_tenant(
                &config, &domain, &user, &password, &project,
            )
            .await
            .context("creating tenant")?;
            println!("{}", serde_json::to_string(&created)?);
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create(Login {
                    domain,
                    user,
                    password,
                }),
        } => {
            let created =
                cloudphone_control::admin::create_user(&config, &domain, &user, &password)
                    .await
                    .context("creating user")?;
            println!("{}", serde_json::to_string(&created)?);
            Ok(())
        }
        Command::Project {
            command: ProjectCommand::Create { domain, project },
        } => {
            let created = cloudphone_control::admin::create_project(&config, &domain, &project)
                .await
                .context("creating project")?;
            println!("{}", serde_json::to_string(&created)?);
            Ok(())
        }
        Command::Domain { command } => {
            use cloudphone_control::admin;
            let out = match command {
                DomainCommand::Create {
                    tenant,
                    domain,
                    default,
                } => admin::create_domain(&config, &tenant, &domain, default).await,
                DomainCommand::List { tenant } => admin::list_domains(&config, &tenant).await,
            }
            .context("domain")?;
            println!("{out}");
            Ok(())
        }
        Command::AccessKey { command } => {
            use cloudphone_control::admin;
            let out = match command {
                AccessKeyCommand::Create { tenant, user } => {
                    admin::create_access_key(&config, &tenant, &user).await
                }
                AccessKeyCommand::List { tenant } => {
                    admin::list_access_keys(&config, &tenant).await
                }
                AccessKeyCommand::Delete { tenant, access } => {
                    admin::delete_access_key(&config, &tenant, &access).await
                }
            }
            .context("access-key")?;
            println!("{out}");
            Ok(())
        }
        Command::Node { command } => {
            use cloudphone_control::admin;
            let out = match command {
                NodeCommand::List { json: _ } => admin::list_nodes(&config).await,
                NodeCommand::JoinToken { ttl } => match admin::parse_ttl(&ttl) {
                    Ok(ttl) => admin::create_join_token(&config, ttl).await,
                    Err(error) => Err(error),
                },
                NodeCommand::Revoke { node_id } => admin::revoke_node(&config, &node_id).await,
                NodeCommand::ClientCert { out } => admin::issue_control_cert(&config, &out),
            }
            .context("node")?;
            println!("{out}");
            Ok(())
        }
        Command::Serve => {
            cloudphone_daemon::init_tracing();
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            let node_listener = tokio::net::TcpListener::bind(config.nodes.listen)
                .await
                .with_context(|| format!("binding {}", config.nodes.listen))?;
            let live_listener = match config.live_api.listen {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr}"))?,
                ),
                None => None,
            };
            if let Some(path) = &cli.ready_file {
                write_ready_file(
                    path,
                    listener.local_addr()?,
                    node_listener.local_addr()?,
                    live_listener.as_ref().map(|l| l.local_addr()).transpose()?,
                )
                .with_context(|| format!("writing {}", path.display()))?;
            }
            cloudphone_control::run(
                config,
                listener,
                node_listener,
                live_listener,
                cloudphone_daemon::shutdown_signal(),
            )
            .await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// `{"http": …, "grpc": …}` as every daemon writes it, plus `"live_api"` when that listener
/// is served; written whole, then renamed, so a reader never sees half of it.
fn write_ready_file(
    path: &std::path::Path,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    live_api: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let Some(live_api) = live_api else {
        return cloudphone_daemon::write_ready_file(path, http, grpc);
    };
    let body = serde_json::json!({
        "http": http.to_string(),
        "grpc": grpc.to_string(),
        "live_api": live_api.to_string(),
    });
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{body}\n"))?;
    std::fs::rename(&partial, path)
}
