//! `kizuna id`: create or show a node key.

use std::path::PathBuf;

use crate::{args, output, CliResult};

/// Create (if missing) or show a node key and print its peer id.
///
/// The key file holds the node's secret Ed25519 key and is created with mode 0600.
#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    /// Key file. Default: $KIZUNA_KEY if set, else $XDG_CONFIG_HOME/kizuna/key, else
    /// ~/.config/kizuna/key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Runs `kizuna id`.
pub(crate) fn run(a: IdArgs) -> CliResult {
    let path = match a.key {
        Some(p) => p,
        None => args::default_key_path()?,
    };
    let existed = path.exists();
    let key = args::load_or_create_key(&path)?;
    if !existed {
        eprintln!("created key file {}", path.display());
    }
    output::line(&key.peer_id().to_string());
    Ok(())
}
