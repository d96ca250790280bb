//! Connection flags shared by every subcommand, with pg_basebackup's names.

use std::path::PathBuf;

use clap::Args;
use pgrepl::{Config, ConnParams, Password, SshConfig, SshTunnel};

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
    /// Connect through an SSH tunnel to this bastion or internal host; -h/-p then name the
    /// database as that host sees it (default localhost). Key passphrase: PGREPL_SSH_KEY_PASSPHRASE
    #[arg(long = "ssh", value_name = "[USER@]HOST[:PORT]", env = "PGREPL_SSH")]
    pub ssh: Option<String>,
    /// SSH private key (default: the agent at SSH_AUTH_SOCK, then ~/.ssh/id_ed25519 and id_rsa)
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Known host keys of SSH servers (default ~/.ssh/known_hosts)
    #[arg(long = "ssh-known-hosts", value_name = "FILE")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// Trust an SSH server not yet in known_hosts and record its key there (a changed key is
    /// always refused)
    #[arg(long = "ssh-accept-new")]
    pub ssh_accept_new: bool,
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
        let tunnel = self.ssh_tunnel()?;
        if tunnel.is_some()
            && p.get("host").is_none()
            && std::env::var("PGHOST").map_or(true, |h| h.is_empty())
        {
            // the database on the SSH host itself, not a socket directory here
            p.set("host", "localhost")?;
        }
        let mut config = p.resolve()?;
        config.ssh = tunnel.map(|mut c| {
            // connect_timeout bounds the SSH handshake too
            if let Some(limit) = config.connect_timeout {
                c.connect_timeout = limit;
            }
            SshTunnel::new(c)
        });
        Ok(config)
    }

    /// The SSH tunnel the flags ask for, if any.
    fn ssh_tunnel(&self) -> anyhow::Result<Option<SshConfig>> {
        let Some(dest) = self.ssh.as_deref().filter(|d| !d.is_empty()) else {
            if self.ssh_key.is_some() || self.ssh_known_hosts.is_some() || self.ssh_accept_new {
                anyhow::bail!(
                    "--ssh-key, --ssh-known-hosts and --ssh-accept-new need --ssh (or PGREPL_SSH)"
                );
            }
            return Ok(None);
        };
        let mut c = SshConfig::parse(dest)?;
        c.key_file.clone_from(&self.ssh_key);
        if let Some(k) = &self.ssh_known_hosts {
            c.known_hosts.clone_from(k);
        }
        c.accept_new = self.ssh_accept_new;
        c.passphrase = std::env::var("PGREPL_SSH_KEY_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty())
            .map(Password::new);
        Ok(Some(c))
    }
}
