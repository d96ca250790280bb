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
    /// Never prompt for a password (the default: pgrepl prompts only with -W)
    #[arg(short = 'w', long = "no-password", overrides_with = "password")]
    pub no_password: bool,
    /// Prompt for the password before connecting (read from the terminal, not echoed)
    #[arg(short = 'W', long = "password", overrides_with = "no_password")]
    pub password: bool,
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
        if self.password {
            let pw = crate::tty::prompt_password("Password: ")
                .map_err(|e| anyhow::anyhow!("could not read the password: {e}"))?;
            p.set("password", &pw)?;
        }
        if p.get("application_name").is_none() {
            p.set("fallback_application_name", "pgrepl")?;
        }
        Ok(p.resolve()?)
    }
}
