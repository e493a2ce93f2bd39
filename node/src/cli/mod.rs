//! The command line: `node serve` (whose flags are [`crate::config`]), and the commands
//! that are not the server: `node dev` ([`dev`]), `node cert` ([`cert`]), `node backup`
//! ([`backup`]) and a client that
//! speaks the HTTP API in the manner of etcdctl ([`client`]). Nothing in the server imports
//! this module; it is the top of the stack.

pub mod backup;
pub mod cert;
pub mod client;
pub mod dev;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

#[derive(Parser, Debug)]
#[command(
    name = "node",
    version,
    about = "rstore node: a replicated key-value store member, and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the `serve` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one cluster member.
    Serve(ServeCommand),
    /// Start a local cluster of N members on loopback, for trying rstore out.
    Dev(dev::DevArgs),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(client::KvCommand),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(client::ClusterCommand),
    /// Back up a running cluster, archive its changes, check a backup, and restore one into a
    /// new cluster (at a backup, or at any revision the archive holds).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Make certificates and tokens: a cluster CA, member and client certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
}

/// `node serve`: the server's flags, and a restore from a backup before it starts.
#[derive(clap::Args, Debug)]
pub struct ServeCommand {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub bootstrap: backup::bootstrap::BootstrapArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
