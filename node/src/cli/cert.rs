//! `node cert`: the files a cluster needs to run with TLS and tokens (a cluster CA, member
//! and client certificates, bearer tokens), made with the same code the tests and `node dev`
//! use ([`crate::pki`]).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// A new cluster CA: DIR/ca.crt and DIR/ca.key (keep the key private).
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// A name for the CA (e.g. the cluster's).
        #[arg(long, default_value = "rstore")]
        name: String,
    },
    /// A member certificate, signed by the CA in --ca-dir: OUT.crt and OUT.key.
    Member {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The member's advertised peer URL (https://host:port); it becomes the certificate's
        /// URI name, which peers check against the membership.
        #[arg(long)]
        peer_url: String,
        /// Every host (DNS name or IP) clients and peers reach the member at; the peer
        /// URL's host is always included.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Path without extension of the files to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// A client certificate with a role (read, write or admin): OUT.crt and OUT.key.
    Client {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A new bearer token: prints it, and appends its hash to the token file members read.
    Token {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        #[arg(long)]
        token_file: PathBuf,
    },
}

fn split_out(out: &std::path::Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = out
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let stem = out
        .file_name()
        .and_then(|s| s.to_str())
        .context("--out must end in a file name")?
        .to_string();
    Ok((dir, stem))
}

/// `node cert ...`.
pub fn run_cert(cmd: CertCommand) -> anyhow::Result<()> {
    use crate::pki::{Ca, Pem, new_token, token_line};
    match cmd {
        CertCommand::Ca { dir, name } => {
            if dir.join("ca.key").exists() {
                bail!(
                    "{} already holds a CA key; refusing to replace it",
                    dir.display()
                );
            }
            Ca::generate(&name)?.pem().write(&dir, "ca")?;
            println!("wrote {0}/ca.crt and {0}/ca.key", dir.display());
        }
        CertCommand::Member {
            ca_dir,
            peer_url,
            mut hosts,
            out,
        } => {
            let ca = Ca::from_pem(Pem::read(&ca_dir, "ca")?)?;
            let url = reqwest::Url::parse(&peer_url).context("--peer-url is not a URL")?;
            if let Some(h) = url.host_str() {
                let h = h.trim_start_matches('[').trim_end_matches(']').to_string();
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            let (dir, stem) = split_out(&out)?;
            ca.member(&hosts, &peer_url)?.write(&dir, &stem)?;
            println!("wrote {0}/{stem}.crt and {0}/{stem}.key", dir.display());
        }
        CertCommand::Client {
            ca_dir,
            name,
            role,
            out,
        } => {
            let ca = Ca::from_pem(Pem::read(&ca_dir, "ca")?)?;
            let (dir, stem) = split_out(&out)?;
            ca.client(&name, &role)?.write(&dir, &stem)?;
            println!("wrote {0}/{stem}.crt and {0}/{stem}.key", dir.display());
        }
        CertCommand::Token {
            name,
            role,
            token_file,
        } => {
            let token = new_token();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&token_file)
                .with_context(|| format!("cannot open {}", token_file.display()))?;
            std::io::Write::write_all(&mut f, token_line(&name, &role, &token).as_bytes())?;
            eprintln!(
                "appended the hash of a {role} token for {name} to {}; members re-read it within seconds",
                token_file.display()
            );
            println!("{token}");
        }
    }
    Ok(())
}
