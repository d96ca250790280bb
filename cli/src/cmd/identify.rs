//! `pgrepl identify`: IDENTIFY_SYSTEM plus the settings a backup depends on.

use std::process::ExitCode;

use clap::Args;

use crate::conn::ConnArgs;

#[derive(Args, Debug)]
pub struct IdentifyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
    /// More logging (repeat for more)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub async fn run(args: IdentifyArgs) -> anyhow::Result<ExitCode> {
    let config = args.conn.config()?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    let summarize = conn.show("summarize_wal").await.ok();
    let version = conn.server_version().clone();
    let tls = conn.is_tls();
    let cb = conn.channel_binding_used();
    conn.close().await?;
    if args.json {
        let v = serde_json::json!({
            "system_identifier": id.system_id.to_string(),
            "timeline": id.timeline.0,
            "xlogpos": id.xlogpos.to_string(),
            "server_version": version.text,
            "server_version_major": version.major,
            "wal_segment_size": seg.bytes(),
            "summarize_wal": summarize,
            "tls": tls,
            "channel_binding": cb,
        });
        println!("{v}");
    } else {
        println!("system identifier: {}", id.system_id);
        println!("timeline:          {}", id.timeline);
        println!("WAL position:      {}", id.xlogpos);
        println!("server version:    {}", version.text);
        println!("WAL segment size:  {} MiB", seg.bytes() >> 20);
        if let Some(s) = summarize {
            println!("summarize_wal:     {s}");
        }
        println!(
            "connection:        {}",
            match (tls, cb) {
                (true, true) => "TLS, SCRAM channel binding",
                (true, false) => "TLS",
                _ => "unencrypted",
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
