//! Command line of the `operator` binary (clap derive), kept in the library so that tests can
//! parse and run commands without spawning a process.
//!
//! - `operator crd`: print the CRD;
//! - `operator run`: the controller against the cluster of the current kubeconfig or service
//!   account, with leader election, metrics and health endpoints;
//! - `operator local -f FILE`: the local control plane (see [`crate::local`]).
//!
//! Each command's arguments and body live in their own module: [`run`] and [`local`]; [`log`]
//! holds the log format both take.

use std::io::Write;

use clap::{Parser, Subcommand};

mod local;
mod log;
mod run;

pub use local::{LocalArgs, read_resources};
pub use log::LogFormat;
pub use run::{RunArgs, shutdown_signal};

use crate::crd;
use crate::{Error, Result};

/// Kubernetes operator for rstore clusters.
#[derive(Debug, Parser)]
#[command(name = "operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `operator`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the ReplicatedStore CustomResourceDefinition as YAML on stdout.
    Crd {
        /// Print every CRD the operator serves (ReplicatedStore, Backup, BackupSchedule) as
        /// one YAML stream, for `kubectl apply -f -`.
        #[arg(long)]
        all: bool,
        /// Write every CRD into this directory instead, one file each, as `crds/` holds them.
        #[arg(long, conflicts_with = "all")]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Print the ReplicatedStore field reference as Markdown (docs/crd.md).
    CrdReference,
    /// Run the controller against a Kubernetes cluster.
    Run(RunArgs),
    /// Run a local control plane: the real reconcile loop against an in-memory API server,
    /// with real node processes on loopback. Edit the file to scale or change the mode.
    Local(LocalArgs),
}

impl Cli {
    /// The log format the command asks for (`crd` logs nothing).
    pub fn log_format(&self) -> Option<LogFormat> {
        match &self.command {
            Command::Crd { .. } | Command::CrdReference => None,
            Command::Run(a) => Some(a.log_format),
            Command::Local(a) => Some(a.log_format),
        }
    }

    /// Run the command, writing its output to `out`.
    pub fn execute(&self, out: &mut impl Write) -> Result<()> {
        match &self.command {
            Command::Crd {
                out_dir: Some(dir), ..
            } => {
                for (file, crd) in crd::all_crds() {
                    let yaml = serde_yaml::to_string(&crd).map_err(Error::CrdSerialize)?;
                    let path = dir.join(file);
                    std::fs::write(&path, yaml).map_err(|source| Error::Io {
                        what: format!("write {}", path.display()),
                        source,
                    })?;
                }
                Ok(())
            }
            Command::Crd { all, .. } => {
                let yaml = if *all {
                    crd::all_crds_yaml()
                } else {
                    crd::crd_yaml()
                };
                out.write_all(yaml.map_err(Error::CrdSerialize)?.as_bytes())
                    .map_err(Error::WriteOutput)?;
                Ok(())
            }
            Command::CrdReference => out
                .write_all(crd::reference_markdown().as_bytes())
                .map_err(Error::WriteOutput),
            Command::Run(args) => runtime()?.block_on(run::run(args)),
            Command::Local(args) => runtime()?.block_on(local::local(args, out)),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the async runtime".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Result<()>, String) {
        let cli = Cli::try_parse_from(args).unwrap();
        let mut out = Vec::new();
        let result = cli.execute(&mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn crd_prints_the_generated_yaml() {
        let (result, out) = run(&["operator", "crd"]);
        result.unwrap();
        assert_eq!(out, crd::crd_yaml().unwrap());
        assert!(out.starts_with("apiVersion: apiextensions.k8s.io/v1\n"));
    }

    #[test]
    fn run_flags_have_defaults_and_env_names() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Run(a) => a,
            _ => panic!("not run"),
        };
        let a = parse(&["operator", "run"]);
        assert!(!a.no_leader_election, "leader election is on by default");
        assert_eq!(a.metrics_addr.port(), 8080);
        assert_eq!(a.lease_name, "rstore-operator");
        assert!(parse(&["operator", "run", "--no-leader-election"]).no_leader_election);
        // The last of the pair wins, as the Helm chart may pass either.
        let a = parse(&[
            "operator",
            "run",
            "--no-leader-election",
            "--leader-election",
        ]);
        assert!(!a.no_leader_election);
    }

    #[test]
    fn local_reads_every_resource_and_rejects_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "apiVersion: rstore.dev/v1alpha1\nkind: ReplicatedStore\nmetadata:\n  name: a\nspec:\n  replicas: 3\n---\napiVersion: rstore.dev/v1alpha1\nkind: ReplicatedStore\nmetadata:\n  name: b\nspec: {}\n",
        )
        .unwrap();
        let list = read_resources(&good).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].spec.replicas, 3, "defaults apply");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
        )
        .unwrap();
        let err = read_resources(&bad).unwrap_err().to_string();
        assert!(err.contains("not a ReplicatedStore"), "{err}");
        let missing = run(&["operator", "local", "-f", "/nonexistent/rstore.yaml"]).0;
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/rstore.yaml")
        );
    }
}
