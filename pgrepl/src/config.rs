//! Connection parameters: libpq URIs and key=value strings, PG* environment variables, and the
//! password file.
//!
//! Keyword meanings and precedence follow libpq (`libpq-connect` and `libpq-envars` in the
//! PostgreSQL documentation, `src/interfaces/libpq/fe-connect.c`): explicit parameters win over
//! the environment, which wins over built-in defaults; the password file is consulted only when
//! no password was given. One host is supported.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, over TCP.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it (the default).
    Prefer,
    /// TLS or fail; the certificate is checked only if a root certificate is configured.
    Require,
    /// TLS, with the certificate chain checked against the root certificate.
    VerifyCa,
    /// As verify-ca, and the host name must match the certificate.
    VerifyFull,
}

impl SslMode {
    /// The name libpq uses (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(Error::Config(format!("invalid sslmode value: \"{other}\""))),
        })
    }
}

/// `sslnegotiation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslNegotiation {
    /// SSLRequest first, then TLS (every server version).
    Postgres,
    /// TLS straight away with ALPN "postgresql" (PostgreSQL 17+).
    Direct,
}

/// `channel_binding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never use it.
    Disable,
    /// Use it when TLS and SCRAM-SHA-256-PLUS are available (the default).
    Prefer,
    /// Fail unless the server authenticates with SCRAM-SHA-256-PLUS.
    Require,
}

/// `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of trusted certificates.
    File(PathBuf),
    /// The platform's trust store (`sslrootcert=system`); implies verify-full.
    System,
}

/// A password that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<String>) -> Self {
        Password(p.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Everything needed to open a replication connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server address.
    pub host: Host,
    /// Port (also names the Unix socket file).
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, if one is known.
    pub password: Option<Password>,
    /// Database name sent in the startup packet (a physical walsender ignores it).
    pub dbname: Option<String>,
    /// `application_name`, shown in pg_stat_replication.
    pub application_name: Option<String>,
    /// `options` (command-line options for the backend).
    pub options: Option<String>,
    /// Give up connecting after this long (per attempt).
    pub connect_timeout: Option<Duration>,
    /// TCP keepalives on (the default).
    pub keepalives: bool,
    /// Idle time before the first keepalive probe.
    pub keepalives_idle: Option<Duration>,
    /// Interval between probes.
    pub keepalives_interval: Option<Duration>,
    /// Probes before the connection is considered dead.
    pub keepalives_count: Option<u32>,
    /// TLS policy.
    pub sslmode: SslMode,
    /// How TLS starts.
    pub sslnegotiation: SslNegotiation,
    /// Trusted roots.
    pub sslrootcert: Option<RootCert>,
    /// Client certificate (PEM).
    pub sslcert: Option<PathBuf>,
    /// Client key (PEM).
    pub sslkey: Option<PathBuf>,
    /// Channel-binding policy.
    pub channel_binding: ChannelBinding,
    /// Send SNI (the default, for host names only).
    pub sslsni: bool,
    /// Reach `host:port` through this SSH tunnel (`host` as the SSH server resolves it).
    pub ssh: Option<crate::ssh::SshTunnel>,
}

/// Keywords we accept, as libpq spells them. Anything else is an error, as in libpq.
const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "passfile",
    "dbname",
    "application_name",
    "fallback_application_name",
    "options",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslsni",
    "channel_binding",
    "replication",
    "client_encoding",
    "target_session_attrs",
    "gssencmode",
    "sslcompression",
    "requiressl",
];

/// Connection keywords before defaults and the environment are applied.
///
/// Build one from a conninfo string with [`ConnParams::parse`], add or override keywords with
/// [`ConnParams::set`] (as command-line flags do), then [`ConnParams::resolve`] it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnParams {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.values {
            if k == "password" {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl ConnParams {
    /// Parses a `postgresql://` / `postgres://` URI or a `key=value` string.
    pub fn parse(conninfo: &str) -> Result<Self> {
        let trimmed = conninfo.trim_start();
        if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
            parse_uri(trimmed)
        } else {
            parse_kv(conninfo)
        }
    }

    /// Sets a keyword, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> Result<&mut Self> {
        if !KEYWORDS.contains(&key) {
            return Err(Error::Config(format!(
                "invalid connection option \"{key}\""
            )));
        }
        self.values.insert(key.to_owned(), value.into());
        Ok(self)
    }

    /// The value of a keyword, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Applies PG* environment variables and defaults, consults the password file, and checks
    /// the combination.
    pub fn resolve(&self) -> Result<Config> {
        self.resolve_with(&|k| std::env::var(k).ok())
    }

    /// As [`ConnParams::resolve`], reading the environment through `env` (for tests).
    pub fn resolve_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let src = Sources { params: self, env };
        let (host, port) = src.endpoint()?;
        let user = src.user()?;
        let timing = src.timing()?;
        let tls = src.tls(matches!(host, Host::Unix(_)))?;
        let password = match src.get("password", "PGPASSWORD") {
            Some(p) => Some(Password::new(p)),
            None => src.pgpass(&host, port, &user),
        };
        Ok(Config {
            host,
            port,
            user,
            password,
            dbname: src.get("dbname", "PGDATABASE"),
            application_name: src
                .get("application_name", "PGAPPNAME")
                .or_else(|| self.get("fallback_application_name").map(str::to_owned)),
            options: src.get("options", "PGOPTIONS"),
            connect_timeout: timing.connect_timeout,
            keepalives: timing.keepalives,
            keepalives_idle: timing.keepalives_idle,
            keepalives_interval: timing.keepalives_interval,
            keepalives_count: timing.keepalives_count,
            sslmode: tls.sslmode,
            sslnegotiation: tls.sslnegotiation,
            sslrootcert: tls.sslrootcert,
            sslcert: tls.sslcert,
            sslkey: tls.sslkey,
            channel_binding: tls.channel_binding,
            sslsni: tls.sslsni,
            ssh: None,
        })
    }
}

/// Where a setting comes from: the keyword, else its `PG*` variable (empty counts as unset).
struct Sources<'a> {
    params: &'a ConnParams,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// Timeouts and TCP keepalives, resolved.
struct Timing {
    connect_timeout: Option<Duration>,
    keepalives: bool,
    keepalives_idle: Option<Duration>,
    keepalives_interval: Option<Duration>,
    keepalives_count: Option<u32>,
}

/// TLS settings, resolved and checked together.
struct TlsSettings {
    sslmode: SslMode,
    sslnegotiation: SslNegotiation,
    sslrootcert: Option<RootCert>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    channel_binding: ChannelBinding,
    sslsni: bool,
}

impl Sources<'_> {
    fn get(&self, key: &str, var: &str) -> Option<String> {
        self.params
            .values
            .get(key)
            .cloned()
            .filter(|v| !v.is_empty())
            .or_else(|| (self.env)(var).filter(|v| !v.is_empty()))
    }

    /// As libpq: $HOME, else the password database's entry.
    fn home(&self) -> Option<PathBuf> {
        (self.env)("HOME")
            .map(PathBuf::from)
            .or_else(|| crate::osuser::effective_user().map(|(_, h)| h))
            .filter(|h| !h.as_os_str().is_empty())
    }

    /// A file under ~/.postgresql, if it exists.
    fn default_file(&self, name: &str) -> Option<PathBuf> {
        self.home()
            .map(|h| h.join(".postgresql").join(name))
            .filter(|p| p.exists())
    }

    /// Host (or socket directory) and port.
    fn endpoint(&self) -> Result<(Host, u16)> {
        let host_s = self
            .get("hostaddr", "PGHOSTADDR")
            .or_else(|| self.get("host", "PGHOST"))
            .unwrap_or_else(default_socket_dir);
        if host_s.contains(',') {
            return Err(Error::Config(format!(
                "only one host is supported, got \"{host_s}\""
            )));
        }
        let host = if host_s.starts_with('/') || host_s.starts_with('@') {
            Host::Unix(PathBuf::from(host_s))
        } else {
            Host::Tcp(host_s)
        };
        let port = match self.get("port", "PGPORT") {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| Error::Config(format!("invalid port number: \"{p}\"")))?,
        };
        Ok((host, port))
    }

    /// The user; as libpq, the effective user's name whatever $USER says.
    fn user(&self) -> Result<String> {
        if let Some(u) = self.get("user", "PGUSER") {
            return Ok(u);
        }
        crate::osuser::effective_user()
            .map(|(name, _)| name)
            .or_else(|| (self.env)("USER"))
            .or_else(|| (self.env)("LOGNAME"))
            .ok_or_else(|| {
                Error::Config(
                    "could not look up the effective user's name; give one with user= or PGUSER"
                        .into(),
                )
            })
    }

    fn timing(&self) -> Result<Timing> {
        let params = self.params;
        let plain_secs = |key: &str| -> Result<Option<Duration>> {
            match params.get(key) {
                None => Ok(None),
                Some(v) => v
                    .parse::<u64>()
                    .map(|s| Some(Duration::from_secs(s)))
                    .map_err(|_| Error::Config(format!("invalid integer value \"{v}\" for {key}"))),
            }
        };
        // as libpq: 0 means none, and less than 2 s is 2 s
        let connect_timeout = match self.get("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => None,
            Some(v) => v
                .parse::<u64>()
                .map(|s| (s > 0).then(|| Duration::from_secs(s.max(2))))
                .map_err(|_| {
                    Error::Config(format!("invalid integer value \"{v}\" for connect_timeout"))
                })?,
        };
        let keepalives = match params.get("keepalives") {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => return Err(Error::Config(format!("invalid keepalives value \"{v}\""))),
        };
        let keepalives_count = match params.get("keepalives_count") {
            None => None,
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                Error::Config(format!(
                    "invalid integer value \"{v}\" for keepalives_count"
                ))
            })?),
        };
        Ok(Timing {
            connect_timeout,
            keepalives,
            keepalives_idle: plain_secs("keepalives_idle")?,
            keepalives_interval: plain_secs("keepalives_interval")?,
            keepalives_count,
        })
    }

    /// sslmode and its companions, with libpq's refusals of combinations that cannot hold.
    fn tls(&self, is_unix: bool) -> Result<TlsSettings> {
        let sslmode_explicit = self.get("sslmode", "PGSSLMODE");
        let mut sslmode = match &sslmode_explicit {
            Some(s) => SslMode::parse(s)?,
            None => SslMode::Prefer,
        };
        let sslrootcert = match self.get("sslrootcert", "PGSSLROOTCERT") {
            Some(s) if s == "system" => Some(RootCert::System),
            Some(s) => Some(RootCert::File(PathBuf::from(s))),
            None => self.default_file("root.crt").map(RootCert::File),
        };
        if sslrootcert == Some(RootCert::System) {
            match &sslmode_explicit {
                None => sslmode = SslMode::VerifyFull,
                Some(m) if sslmode != SslMode::VerifyFull => {
                    return Err(Error::Config(format!(
                        "weak sslmode \"{m}\" may not be used with sslrootcert=system (use \"verify-full\")"
                    )))
                }
                _ => {}
            }
        }
        let sslnegotiation = match self.get("sslnegotiation", "PGSSLNEGOTIATION").as_deref() {
            None | Some("postgres") => SslNegotiation::Postgres,
            Some("direct") => SslNegotiation::Direct,
            Some(v) => {
                return Err(Error::Config(format!(
                    "invalid sslnegotiation value: \"{v}\""
                )))
            }
        };
        if sslnegotiation == SslNegotiation::Direct && sslmode < SslMode::Require {
            return Err(Error::Config(
                "weak sslmode may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")".into(),
            ));
        }
        if is_unix && sslmode >= SslMode::Require {
            return Err(Error::Config(format!(
                "sslmode {sslmode:?} needs a TCP host; TLS is not used over Unix-domain sockets"
            )));
        }
        let channel_binding = match self.get("channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(v) => {
                return Err(Error::Config(format!(
                    "invalid channel_binding value: \"{v}\""
                )))
            }
        };
        if channel_binding == ChannelBinding::Require && (is_unix || sslmode == SslMode::Disable) {
            return Err(Error::Config(
                "channel_binding=require needs TLS, which this connection cannot use".into(),
            ));
        }
        Ok(TlsSettings {
            // a socket without an explicit sslmode: TLS does not apply
            sslmode: if is_unix && sslmode_explicit.is_none() {
                SslMode::Disable
            } else {
                sslmode
            },
            sslnegotiation,
            sslrootcert,
            sslcert: self
                .get("sslcert", "PGSSLCERT")
                .map(PathBuf::from)
                .or_else(|| self.default_file("postgresql.crt")),
            sslkey: self
                .get("sslkey", "PGSSLKEY")
                .map(PathBuf::from)
                .or_else(|| self.default_file("postgresql.key")),
            channel_binding,
            sslsni: self.get("sslsni", "PGSSLSNI").as_deref() != Some("0"),
        })
    }

    /// The password file's entry for this connection (a physical walsender matches entries for
    /// the database "replication"; the default socket directory matches "localhost").
    fn pgpass(&self, host: &Host, port: u16, user: &str) -> Option<Password> {
        let pf = self
            .get("passfile", "PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".pgpass")))?;
        let host_for_match = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => {
                let d = p.to_string_lossy().into_owned();
                if d == default_socket_dir() {
                    "localhost".into()
                } else {
                    d
                }
            }
        };
        lookup_pgpass(&pf, &host_for_match, port, "replication", user).map(Password::new)
    }
}

/// Quotes a conninfo value when it needs it (libpq's rules: single quotes, `\\` and `\'`).
fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b))
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

impl Config {
    /// The connection as a key=value conninfo string without the password, as a standby's
    /// `primary_conninfo` takes it (pg_basebackup `-R`): user, host, port, TLS settings,
    /// database and application name. A standby reads the password from a password file.
    pub fn to_conninfo_without_password(&self) -> String {
        let q = conninfo_value;
        let mut parts = vec![format!("user={}", q(&self.user))];
        match &self.host {
            Host::Tcp(h) => parts.push(format!("host={}", q(h))),
            Host::Unix(d) => parts.push(format!("host={}", q(&d.to_string_lossy()))),
        }
        parts.push(format!("port={}", self.port));
        parts.push(format!("sslmode={}", self.sslmode.as_str()));
        if self.sslnegotiation == SslNegotiation::Direct {
            parts.push("sslnegotiation=direct".into());
        }
        match &self.sslrootcert {
            Some(RootCert::File(p)) => {
                parts.push(format!("sslrootcert={}", q(&p.to_string_lossy())))
            }
            Some(RootCert::System) => parts.push("sslrootcert=system".into()),
            None => {}
        }
        if let Some(p) = &self.sslcert {
            parts.push(format!("sslcert={}", q(&p.to_string_lossy())));
        }
        if let Some(p) = &self.sslkey {
            parts.push(format!("sslkey={}", q(&p.to_string_lossy())));
        }
        if self.channel_binding == ChannelBinding::Require {
            parts.push("channel_binding=require".into());
        }
        if let Some(db) = &self.dbname {
            parts.push(format!("dbname={}", q(db)));
        }
        if let Some(a) = &self.application_name {
            parts.push(format!("application_name={}", q(a)));
        }
        parts.join(" ")
    }

    /// Parses a conninfo string and resolves it against the environment.
    pub fn from_conninfo(conninfo: &str) -> Result<Self> {
        ConnParams::parse(conninfo)?.resolve()
    }

    /// The socket address as text, for messages (`host:port` or the socket path).
    pub fn address(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(d) => self.unix_socket_path(d).display().to_string(),
        }
    }

    pub(crate) fn unix_socket_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

fn default_socket_dir() -> String {
    for d in ["/var/run/postgresql", "/tmp"] {
        if Path::new(d).is_dir() {
            return d.to_owned();
        }
    }
    "/tmp".to_owned()
}

fn parse_kv(s: &str) -> Result<ConnParams> {
    let mut p = ConnParams::default();
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(Error::Config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let mut val = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(Error::Config(
                        "unterminated quoted string in connection info string".into(),
                    ));
                }
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        val.push(b[i + 1]);
                        i += 2;
                    }
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        val.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i]);
                i += 1;
            }
        }
        let val = String::from_utf8(val)
            .map_err(|_| Error::Config(format!("value of \"{key}\" is not UTF-8")))?;
        p.set(key, val)?;
    }
    Ok(p)
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Config(format!("invalid percent-encoded token: \"{s}\"")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config("URI component is not UTF-8".into()))
}

fn parse_uri(s: &str) -> Result<ConnParams> {
    let mut p = ConnParams::default();
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (main, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (u, pw) = match userinfo.split_once(':') {
                Some((u, pw)) => (u, Some(pw)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                p.set("user", percent_decode(u)?)?;
            }
            if let Some(pw) = pw {
                p.set("password", percent_decode(pw)?)?;
            }
            hp
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(Error::Config(format!(
            "only one host is supported, got \"{hostport}\""
        )));
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or_else(|| {
            Error::Config(format!(
                "missing \"]\" in IPv6 host address in URI: \"{s}\""
            ))
        })?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => {
                return Err(Error::Config(format!(
                    "unexpected \"{after}\" after IPv6 host address in URI"
                )))
            }
        };
        (h.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, port)) => (percent_decode(h)?, Some(port)),
            None => (percent_decode(hostport)?, None),
        }
    };
    if !host.is_empty() {
        p.set("host", host)?;
    }
    if let Some(port) = port {
        if !port.is_empty() {
            p.set("port", percent_decode(port)?)?;
        }
    }
    if let Some(db) = path {
        if !db.is_empty() {
            p.set("dbname", percent_decode(db)?)?;
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|x| !x.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
                ))
            })?;
            let k = percent_decode(k)?;
            // libpq accepts ssl=true as sslmode=require in URIs.
            if k == "ssl" && v == "true" {
                p.set("sslmode", "require")?;
                continue;
            }
            p.set(&k, percent_decode(v)?)?;
        }
    }
    Ok(p)
}

/// Looks up a password in a libpq password file. Returns `None` (with a warning) if the file is
/// readable by group or others, as libpq does.
pub fn lookup_pgpass(path: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let ok = |pat: &str, v: &str| pat == "*" || pat == v;
        if ok(&fields[0], host)
            && ok(&fields[1], &port)
            && ok(&fields[2], db)
            && ok(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn uri_with_everything() {
        let p = ConnParams::parse(
            "postgresql://al%40ice:p%3Ass@db.example.com:6543/mydb?sslmode=verify-full&application_name=x",
        )
        .unwrap();
        let c = p.resolve_with(&no_env).unwrap();
        assert_eq!(c.host, Host::Tcp("db.example.com".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.unwrap().expose(), "p:ss");
        assert_eq!(c.dbname.as_deref(), Some("mydb"));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name.as_deref(), Some("x"));
    }

    #[test]
    fn uri_ipv6_and_socket_dir() {
        let c = ConnParams::parse("postgres://[::1]:5433?user=u")
            .unwrap()
            .resolve_with(&no_env)
            .unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.address(), "[::1]:5433");
        let c = ConnParams::parse("postgresql://%2Ftmp%2Fs/db?user=u")
            .unwrap()
            .resolve_with(&no_env)
            .unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/s".into()));
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn key_value_quoting() {
        let p =
            ConnParams::parse(r"host=h port = 5 user='a b' password='it\'s' dbname=x\ y").unwrap();
        assert_eq!(p.get("user"), Some("a b"));
        assert_eq!(p.get("password"), Some("it's"));
        assert_eq!(p.get("dbname"), Some("x y"));
        assert_eq!(p.get("port"), Some("5"));
        assert!(ConnParams::parse("host").is_err());
        assert!(ConnParams::parse("host='x").is_err());
        assert!(ConnParams::parse("bogus=1").is_err());
    }

    #[test]
    fn env_fills_gaps_but_explicit_wins() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_owned()),
            "PGPORT" => Some("7777".to_owned()),
            "PGUSER" => Some("envuser".to_owned()),
            "PGPASSWORD" => Some("envpw".to_owned()),
            _ => None,
        };
        let c = ConnParams::parse("port=1234")
            .unwrap()
            .resolve_with(&env)
            .unwrap();
        assert_eq!(c.host, Host::Tcp("envhost".into()));
        assert_eq!(c.port, 1234);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_ref().unwrap().expose(), "envpw");
    }

    #[test]
    fn debug_never_shows_passwords() {
        let p = ConnParams::parse("password=hunter2 user=u host=h").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let c = p.resolve_with(&no_env).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_combinations() {
        let r = |s: &str| ConnParams::parse(s).unwrap().resolve_with(&no_env);
        assert!(r("host=h user=u sslmode=bogus").is_err());
        assert!(r("host=h user=u port=0").is_err());
        assert!(r("host=h user=u port=99999").is_err());
        assert!(r("host=h,g user=u").is_err());
        assert!(r("host=h user=u sslnegotiation=direct sslmode=prefer").is_err());
        assert!(r("host=/tmp user=u sslmode=require").is_err());
        assert!(r("host=h user=u sslrootcert=system sslmode=require").is_err());
        assert_eq!(
            r("host=h user=u sslrootcert=system").unwrap().sslmode,
            SslMode::VerifyFull
        );
    }

    #[test]
    fn pgpass_matching_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgrepl-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:*:*:*:nope\nh:5432:replication:u:s\\:ecret\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup_pgpass(&f, "h", 5432, "replication", "u").as_deref(),
            Some("s:ecret")
        );
        assert_eq!(
            lookup_pgpass(&f, "x", 1, "replication", "v").as_deref(),
            Some("fallback")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup_pgpass(&f, "h", 5432, "replication", "u"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
