//! `pgrepl init --repo URL`: makes a repository (writes its format object, create-only).

use std::process::ExitCode;

use clap::Args;
use pgrepo::Repo;

use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub async fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let (loc, store) = args.repo.store(&[])?;
    let repo = Repo::init(store).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "repository": loc.url(),
                "format": repo.format().format,
                "version": repo.format().version,
                "encrypted": repo.format().encryption.is_some(),
            })
        );
    } else {
        eprintln!("pgrepl: initialized {}", repo.name());
    }
    Ok(ExitCode::SUCCESS)
}
