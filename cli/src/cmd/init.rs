//! `pgrepl init --repo URL`: makes a repository (writes its format object, create-only).

use std::process::ExitCode;

use clap::Args;
use pgrepo::Repo;

use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Encrypt every object to this age recipient (age1…) or to the recipients (or the
    /// identities' recipients) in this file; may be repeated
    #[arg(long = "encrypt-to", value_name = "RECIPIENT-OR-FILE")]
    encrypt_to: Vec<String>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub async fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let recipients = crate::repo_args::read_recipients(&args.encrypt_to)?;
    if !args.encrypt_to.is_empty() && recipients.is_empty() {
        anyhow::bail!("--encrypt-to named no recipient");
    }
    let (loc, store) = args.repo.store(&[])?;
    let repo = Repo::init(store, &recipients).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "repository": loc.url(),
                "format": repo.format().format,
                "version": repo.format().version,
                "encrypted": repo.format().encryption.is_some(),
                "recipients": repo.format().encryption.as_ref().map(|e| e.recipients.clone()),
            })
        );
    } else {
        match &repo.format().encryption {
            Some(e) => eprintln!(
                "pgrepl: initialized {}, every object encrypted to {}",
                repo.name(),
                e.recipients.join(", ")
            ),
            None => eprintln!("pgrepl: initialized {}", repo.name()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
