//! Command line of the `operator` binary (clap derive), kept in the library so that tests can
//! parse and run commands without spawning a process.

use std::io::Write;

use clap::{Parser, Subcommand};

use crate::{Error, Result, crd};

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
    Crd,
    /// Run the controller (not implemented yet).
    Run,
}

impl Cli {
    /// Run the command, writing its output to `out`.
    pub fn execute(&self, out: &mut impl Write) -> Result<()> {
        match self.command {
            Command::Crd => {
                out.write_all(crd::crd_yaml()?.as_bytes())
                    .map_err(Error::WriteOutput)?;
                Ok(())
            }
            // Refuse rather than pretend: a controller that does nothing would look healthy.
            Command::Run => Err(Error::RunNotImplemented),
        }
    }
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
    fn run_refuses_until_the_controller_exists() {
        let (result, out) = run(&["operator", "run"]);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::RunNotImplemented));
        assert!(err.to_string().contains("not implemented yet"));
        assert!(out.is_empty());
    }
}
