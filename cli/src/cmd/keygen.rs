//! `pgrepl keygen -o FILE`: an age X25519 identity for an encrypted repository, written 0600
//! (never over an existing file); its public recipient is printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pgrepo::age::Identity;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the identity (must not exist)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Print the recipient as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let id = Identity::generate()?;
    let recipient = id.recipient().to_string();
    let created = basebackup::manifest::format_gmt(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        id.to_secret_string()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.output)
        .with_context(|| format!("could not create \"{}\"", args.output.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("could not write \"{}\"", args.output.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"identity_file": args.output.display().to_string(), "recipient": recipient})
        );
    } else {
        println!("{recipient}");
        eprintln!(
            "pgrepl: wrote the identity to \"{}\" (keep it: it alone decrypts the repository)",
            args.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
