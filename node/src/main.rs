//! The `node` binary, kept thin so that tests drive the same code through the library: it
//! parses the command line, binds the listeners `node serve` names, and runs the chosen
//! command.

use clap::Parser;

// glibc's malloc spent about a sixth of a loaded node's CPU when the log was in sled (which
// allocates and frees large aligned I/O buffers on every flush, tripping
// `malloc_consolidate`); mimalloc took put throughput up by a quarter then. `no_thp` keeps idle memory where it was: with
// transparent huge pages, mimalloc's eagerly committed arenas took idle RSS from 12 to 55 MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rstore_node::cli::{Cli, Command};
use rstore_node::config::LogFormat;
use rstore_node::node::{self, Node};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal(exit_with_stdin: bool) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    // A plain thread, not tokio's stdin: a blocking read in tokio's pool cannot be
    // cancelled, and would keep the runtime (and the process) from ending after shutdown.
    let (closed, on_closed) = tokio::sync::oneshot::channel::<()>();
    if exit_with_stdin {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
    }
    let stdin_closed = async {
        if !exit_with_stdin || on_closed.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        _ = stdin_closed => tracing::info!("standard input closed (node dev stopped): shutting down"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(cmd) = &cli.command
        && let Some(n) = cmd.serve.worker_threads
    {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(cmd) => {
            let args = cmd.serve;
            init_tracing(args.log_format);
            let message_path = args.termination_message_path.clone();
            let served = async {
                let settings = args.settings()?;
                if let Some(hosts) = &args.hosts_file {
                    rstore_node::network::hosts::set_file(hosts.clone());
                }
                rstore_node::cli::backup::bootstrap::restore_at_start(&cmd.bootstrap, &settings)
                    .await?;
                let (client, peer) = node::bind(&settings).await?;
                let node = Node::start(settings, client, peer).await?;
                node.run(shutdown_signal(args.exit_with_stdin)).await
            }
            .await;
            if let (Err(e), Some(path)) = (&served, &message_path) {
                write_termination_message(path, &format!("{e:#}"));
            }
            served
        }
        Command::Dev(args) => rstore_node::cli::dev::run(args).await,
        // Client commands: one clear line on failure, never a backtrace.
        Command::Kv(cmd) => client_result(rstore_node::cli::client::run_kv(cmd).await),
        Command::Cluster(cmd) => client_result(rstore_node::cli::client::run_cluster(cmd).await),
        Command::Backup(cmd) => client_result(rstore_node::cli::backup::run_backup(cmd).await),
        Command::Cert(cmd) => client_result(rstore_node::cli::cert::run_cert(cmd)),
    }
}

/// Kubernetes keeps at most 4096 bytes of a termination message; the start of the error
/// chain says the most, so the end is cut (at a character boundary).
fn write_termination_message(path: &std::path::Path, message: &str) {
    const MAX: usize = 4096;
    let mut end = message.len().min(MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(path, &message[..end]) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination message");
    }
}

fn client_result(r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
