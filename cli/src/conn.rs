//! Connection flags shared by every subcommand, with pg_basebackup's names.

use clap::Args;
use pgrepl::{Config, ConnParams};

/// `-d/--dbname CONNINFO`, `-h`, `-p`, `-U`, `-w/-W` as in pg_basebackup.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Connection string (URI or key=value); -h/-p/-U override its parts
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    pub dbname: Option<String>,
    /// Database server host or socket directory
    #[arg(short = 'h', long = "host", value_name = "HOSTNAME")]
    pub host: Option<String>,
    /// Database server port
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// Connect as this role
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
    /// Never prompt for a password (accepted for compatibility; pgrepl never prompts)
    #[arg(short = 'w', long = "no-password")]
    pub no_password: bool,
}

impl ConnArgs {
    /// Resolves the flags, the connection string and the PG* environment into a [`Config`].
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut p = match &self.dbname {
            Some(s) => ConnParams::parse(s)?,
            None => ConnParams::default(),
        };
        if let Some(h) = &self.host {
            p.set("host", h)?;
        }
        if let Some(port) = &self.port {
            p.set("port", port)?;
        }
        if let Some(u) = &self.username {
            p.set("user", u)?;
        }
        if p.get("application_name").is_none() {
            p.set("fallback_application_name", "pgrepl")?;
        }
        Ok(p.resolve()?)
    }
}
