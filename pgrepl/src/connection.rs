//! A replication connection: socket, TLS negotiation, startup, authentication, and the message
//! loop shared by every command.
//!
//! Startup and authentication flow from `protocol-flow` in the PostgreSQL documentation and
//! `src/interfaces/libpq/fe-connect.c` / `fe-auth.c`. The connection owns the socket; the
//! per-command state machines in [`crate::commands`], [`crate::stream`] and
//! [`crate::backup_stream`] borrow it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{ChannelBinding, Config, Host, SslMode, SslNegotiation};
use crate::error::{AuthError, DbError, Error, Result};
use crate::message::{
    parse_frame_bounded, AuthRequest, BackendMessage, Column, MAX_MESSAGE_LEN,
    MAX_STARTUP_MESSAGE_LEN,
};
use crate::socket::Socket;

/// The server's version, from the `server_version` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    /// Major version (15, 16, 17, 18, ...).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// The full text, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub text: String,
}

impl ServerVersion {
    fn parse(text: &str) -> Option<Self> {
        let num = text.split_whitespace().next()?;
        let mut parts = num.split('.');
        let major: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let major = major.parse().ok()?;
        let minor = parts
            .next()
            .map(|m| {
                m.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Some(ServerVersion {
            major,
            minor,
            text: text.to_owned(),
        })
    }
}

/// One result set of a simple query: column names and text values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Columns, in order.
    pub columns: Vec<Column>,
    /// Rows; NULL is `None`. Replication commands answer in text.
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag.
    pub tag: String,
}

/// Bytes queued before a bulk read wakes up.
const BULK_LOWAT: i32 = 256 * 1024;
/// How long a bulk read waits for [`BULK_LOWAT`] bytes before taking what is there.
const BULK_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Receives the server's NoticeResponse messages that arrive outside a stream.
pub type NoticeHandler = Arc<dyn Fn(&DbError) + Send + Sync>;

/// A physical replication connection (`replication=true`).
pub struct Connection {
    socket: Socket,
    read_buf: BytesMut,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    version: ServerVersion,
    backend_pid: u32,
    tls: bool,
    channel_binding_used: bool,
    notice_handler: NoticeHandler,
    /// The protocol state, named in errors.
    pub(crate) state: &'static str,
    /// Set when the connection can no longer be used (a protocol error, or a stream that was
    /// abandoned in the middle).
    pub(crate) broken: Option<&'static str>,
    /// Bulk reads (a base backup's COPY): wake up for whole batches of data, not every packet.
    pub(crate) bulk: bool,
    /// The socket's receive low-water mark as last set (1 is the kernel's default); 0 when the
    /// socket cannot take one.
    lowat: i32,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server_version", &self.version.text)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn default_notice_handler() -> NoticeHandler {
    Arc::new(|n: &DbError| tracing::warn!("{n}"))
}

/// How to treat TLS on one attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsAttempt {
    Plain,
    /// TLS if the server agrees; plain if it says 'N' (prefer).
    Try,
    /// TLS or fail.
    Must,
}

impl Connection {
    /// Opens a replication connection as `config` says, within `connect_timeout` if set.
    /// Through an SSH tunnel, the SSH connection (if not open yet) comes first, within the
    /// tunnel's own timeout.
    pub async fn connect(config: &Config) -> Result<Connection> {
        if let Some(tunnel) = &config.ssh {
            tunnel.connect().await?;
        }
        let fut = Self::connect_inner(config);
        match config.connect_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::Timeout("connect"))?,
            None => fut.await,
        }
    }

    async fn connect_inner(config: &Config) -> Result<Connection> {
        let is_unix = matches!(config.host, Host::Unix(_));
        match config.sslmode {
            _ if is_unix => Self::attempt(config, TlsAttempt::Plain).await,
            SslMode::Disable => Self::attempt(config, TlsAttempt::Plain).await,
            SslMode::Allow => match Self::attempt(config, TlsAttempt::Plain).await {
                // The server refused a plain connection (pg_hba hostssl); retry with TLS.
                Err(e) if e.code() == Some("28000") => {
                    Self::attempt(config, TlsAttempt::Must).await
                }
                other => other,
            },
            SslMode::Prefer => Self::attempt(config, TlsAttempt::Try).await,
            _ => Self::attempt(config, TlsAttempt::Must).await,
        }
    }

    async fn open_socket(config: &Config) -> Result<Socket> {
        if let Some(tunnel) = &config.ssh {
            let Host::Tcp(host) = &config.host else {
                return Err(Error::Config(
                    "through an SSH tunnel the database host must be a host name or address \
                     as the SSH server sees it, not a socket directory"
                        .into(),
                ));
            };
            let s = tunnel.open(host, config.port).await?;
            return Ok(Socket::Ssh(Box::new(s)));
        }
        match &config.host {
            Host::Unix(dir) => {
                let path = config.unix_socket_path(dir);
                let s = UnixStream::connect(&path).await.map_err(|e| {
                    Error::io(
                        format!(
                            "connection to server on socket \"{}\" failed",
                            path.display()
                        ),
                        e,
                    )
                })?;
                Ok(Socket::Unix(s))
            }
            Host::Tcp(host) => {
                let s = TcpStream::connect((host.as_str(), config.port))
                    .await
                    .map_err(|e| {
                        Error::io(
                            format!("connection to server at {} failed", config.address()),
                            e,
                        )
                    })?;
                let _ = s.set_nodelay(true);
                if config.keepalives {
                    let mut ka = socket2::TcpKeepalive::new();
                    if let Some(t) = config.keepalives_idle {
                        ka = ka.with_time(t);
                    }
                    if let Some(t) = config.keepalives_interval {
                        ka = ka.with_interval(t);
                    }
                    if let Some(n) = config.keepalives_count {
                        ka = ka.with_retries(n);
                    }
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&ka);
                }
                Ok(Socket::Tcp(s))
            }
        }
    }

    async fn attempt(config: &Config, tls: TlsAttempt) -> Result<Connection> {
        let socket = Self::open_socket(config).await?;
        let socket = match (socket, tls) {
            (s, TlsAttempt::Plain) | (s @ Socket::Unix(_), _) => s,
            (s @ (Socket::Tcp(_) | Socket::Ssh(_)), mode) => {
                Self::negotiate_tls(config, s, mode).await?
            }
            (s @ Socket::Tls(_), _) => s,
        };
        let mut conn = Connection {
            tls: matches!(socket, Socket::Tls(_)),
            socket,
            bulk: false,
            lowat: 1,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            version: ServerVersion {
                major: 0,
                minor: 0,
                text: String::new(),
            },
            backend_pid: 0,
            channel_binding_used: false,
            notice_handler: default_notice_handler(),
            state: "startup",
            broken: None,
        };
        conn.startup(config).await?;
        Ok(conn)
    }

    async fn negotiate_tls(config: &Config, mut tcp: Socket, mode: TlsAttempt) -> Result<Socket> {
        let Host::Tcp(host) = &config.host else {
            return Ok(tcp);
        };
        if config.sslnegotiation == SslNegotiation::Postgres {
            let mut buf = BytesMut::new();
            frontend::ssl_request(&mut buf);
            tcp.write_all(&buf)
                .await
                .map_err(|e| Error::io("sending SSLRequest", e))?;
            // Exactly one byte: anything after it belongs to the TLS handshake.
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .map_err(|e| Error::io("reading the answer to SSLRequest", e))?;
            match answer[0] {
                b'S' => {}
                b'N' if mode == TlsAttempt::Try => return Ok(tcp),
                b'N' => {
                    return Err(Error::Tls(
                        "server does not support SSL, but SSL was required".into(),
                    ))
                }
                // Never show what an unencrypted server said here (CVE-2024-10977).
                other => {
                    return Err(Error::protocol(
                        "SSL negotiation",
                        format!("received invalid response to SSL negotiation: 0x{other:02x}"),
                    ))
                }
            }
        }
        let mut tls_config = crate::tls::client_config(config)?;
        tls_config.enable_sni = config.sslsni;
        let name = crate::tls::server_name(host)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            Error::Tls(format!(
                "TLS handshake with {} failed: {e}",
                config.address()
            ))
        })?;
        Ok(Socket::Tls(Box::new(stream)))
    }

    async fn startup(&mut self, config: &Config) -> Result<()> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", config.user.as_str()),
            (
                "database",
                config.dbname.as_deref().unwrap_or("replication"),
            ),
            ("replication", "true"),
        ];
        if let Some(a) = &config.application_name {
            params.push(("application_name", a));
        }
        if let Some(o) = &config.options {
            params.push(("options", o));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(params, &mut buf)
            .map_err(|e| Error::Config(format!("startup packet: {e}")))?;
        self.write_buf.extend_from_slice(&buf);
        self.flush().await?;

        self.state = "authentication";
        self.authenticate(config).await?;

        self.state = "startup";
        loop {
            match self.read_message().await? {
                BackendMessage::ParameterStatus { name, value } => self.set_parameter(name, value),
                BackendMessage::BackendKeyData { pid, .. } => self.backend_pid = pid,
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::NoticeResponse(n) => (self.notice_handler)(&n),
                BackendMessage::ErrorResponse(e) => return Err(self.db_error(e)),
                BackendMessage::NegotiateProtocolVersion { version, .. } => {
                    if version >> 16 != 3 {
                        return Err(Error::protocol(
                            "startup",
                            format!(
                                "server offers protocol version {}.{}",
                                version >> 16,
                                version & 0xffff
                            ),
                        ));
                    }
                }
                other => {
                    return Err(Error::protocol(
                        "startup",
                        format!("unexpected message {other:?}"),
                    ))
                }
            }
        }
        self.version = self
            .parameters
            .get("server_version")
            .and_then(|v| ServerVersion::parse(v))
            .ok_or_else(|| {
                Error::protocol(
                    "startup",
                    "the server did not report a usable server_version",
                )
            })?;
        self.state = "idle";
        Ok(())
    }

    async fn authenticate(&mut self, config: &Config) -> Result<()> {
        let mut scram: Option<ScramSha256> = None;
        let mut used_plus = false;
        loop {
            let msg = self.read_message().await?;
            let req = match msg {
                BackendMessage::Authentication(r) => r,
                BackendMessage::ErrorResponse(e) => return Err(self.db_error(e)),
                BackendMessage::NoticeResponse(n) => {
                    (self.notice_handler)(&n);
                    continue;
                }
                BackendMessage::NegotiateProtocolVersion { .. } => continue,
                other => {
                    return Err(Error::protocol(
                        "authentication",
                        format!("unexpected message {other:?}"),
                    ))
                }
            };
            let password = |method: &'static str| {
                config
                    .password
                    .as_ref()
                    .map(|p| p.expose().as_bytes().to_vec())
                    .ok_or(Error::Auth(AuthError::PasswordRequired { method }))
            };
            match req {
                AuthRequest::Ok => break,
                AuthRequest::Cleartext | AuthRequest::Md5(_)
                    if config.channel_binding == ChannelBinding::Require =>
                {
                    return Err(AuthError::ChannelBindingRequired(
                        "the server requested password authentication without channel binding",
                    )
                    .into())
                }
                AuthRequest::Cleartext => {
                    let pw = password("password")?;
                    let mut buf = BytesMut::new();
                    frontend::password_message(&pw, &mut buf)
                        .map_err(|e| Error::Config(format!("password: {e}")))?;
                    self.write_buf.extend_from_slice(&buf);
                    self.flush().await?;
                }
                AuthRequest::Md5(salt) => {
                    let pw = password("md5")?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        &pw,
                        salt,
                    );
                    let mut buf = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut buf)
                        .map_err(|e| Error::Config(format!("password: {e}")))?;
                    self.write_buf.extend_from_slice(&buf);
                    self.flush().await?;
                }
                AuthRequest::Sasl(mechanisms) => {
                    let pw = password("SCRAM-SHA-256")?;
                    let offers_plus = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
                    let offers_plain = mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256);
                    let want_binding =
                        self.tls && config.channel_binding != ChannelBinding::Disable;
                    let (mechanism, binding) = if want_binding && offers_plus {
                        let hash = self.peer_cert_hash().map_err(|e| {
                            Error::Auth(AuthError::Scram(format!("channel binding: {e}")))
                        })?;
                        used_plus = true;
                        (
                            sasl::SCRAM_SHA_256_PLUS,
                            sasl::ChannelBinding::tls_server_end_point(hash),
                        )
                    } else if config.channel_binding == ChannelBinding::Require {
                        return Err(AuthError::ChannelBindingRequired(
                            "the server does not offer SCRAM-SHA-256-PLUS",
                        )
                        .into());
                    } else if offers_plain {
                        let binding = if want_binding {
                            sasl::ChannelBinding::unrequested()
                        } else {
                            sasl::ChannelBinding::unsupported()
                        };
                        (sasl::SCRAM_SHA_256, binding)
                    } else {
                        return Err(AuthError::UnsupportedMethod(format!(
                            "SASL mechanisms {mechanisms:?}"
                        ))
                        .into());
                    };
                    let s = ScramSha256::new(&pw, binding);
                    let mut buf = BytesMut::new();
                    frontend::sasl_initial_response(mechanism, s.message(), &mut buf)
                        .map_err(|e| Error::Auth(AuthError::Scram(e.to_string())))?;
                    self.write_buf.extend_from_slice(&buf);
                    self.flush().await?;
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Error::protocol("authentication", "SASLContinue without SASL")
                    })?;
                    s.update(&data)
                        .map_err(|e| Error::Auth(AuthError::Scram(e.to_string())))?;
                    let mut buf = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut buf)
                        .map_err(|e| Error::Auth(AuthError::Scram(e.to_string())))?;
                    self.write_buf.extend_from_slice(&buf);
                    self.flush().await?;
                }
                AuthRequest::SaslFinal(data) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        Error::protocol("authentication", "SASLFinal without SASL")
                    })?;
                    s.finish(&data).map_err(|e| {
                        Error::Auth(AuthError::Scram(format!("invalid server signature: {e}")))
                    })?;
                }
                AuthRequest::Other(code) => {
                    let name = match code {
                        2 => "Kerberos V5",
                        7 | 8 => "GSSAPI",
                        9 => "SSPI",
                        _ => "unknown",
                    };
                    return Err(
                        AuthError::UnsupportedMethod(format!("{name} (code {code})")).into(),
                    );
                }
            }
        }
        if config.channel_binding == ChannelBinding::Require && !used_plus {
            return Err(AuthError::ChannelBindingRequired(
                "the server authenticated the client without channel binding",
            )
            .into());
        }
        self.channel_binding_used = used_plus;
        Ok(())
    }

    fn peer_cert_hash(&self) -> std::result::Result<Vec<u8>, String> {
        let Socket::Tls(tls) = &self.socket else {
            return Err("not a TLS connection".into());
        };
        let certs = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("the server presented no certificate")?;
        let first = certs.first().ok_or("the server presented no certificate")?;
        crate::tls::server_end_point_hash(first)
    }

    fn set_parameter(&mut self, name: String, value: String) {
        if name == "server_version" {
            if let Some(v) = ServerVersion::parse(&value) {
                self.version = v;
            }
        }
        self.parameters.insert(name, value);
    }

    pub(crate) fn db_error(&self, e: DbError) -> Error {
        Error::Db {
            state: self.state,
            error: Box::new(e),
        }
    }

    /// Reads one message, waiting for the socket as needed.
    ///
    /// Cancel-safe: bytes read so far stay in the buffer, and nothing is consumed until a whole
    /// message is there.
    pub(crate) async fn read_message(&mut self) -> Result<BackendMessage> {
        if let Some(why) = self.broken {
            return Err(Error::Usage(format!("the connection is unusable: {why}")));
        }
        loop {
            let limit = if self.version.major == 0 {
                MAX_STARTUP_MESSAGE_LEN
            } else {
                MAX_MESSAGE_LEN
            };
            match parse_frame_bounded(&mut self.read_buf, limit) {
                Ok(Some(frame)) => {
                    return BackendMessage::decode(&frame).map_err(|e| {
                        self.broken = Some("protocol violation");
                        Error::protocol(self.state, e.to_string())
                    })
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken = Some("protocol violation");
                    return Err(Error::protocol(self.state, e.to_string()));
                }
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
                // Grow by what a read can fill, never by a length the server declared.
                self.read_buf.reserve(if self.bulk {
                    4 * BULK_LOWAT as usize
                } else {
                    64 * 1024
                });
            }
            let n = self
                .read_some()
                .await
                .map_err(|e| Error::io(format!("reading from server during {}", self.state), e))?;
            if n == 0 {
                self.broken = Some("closed by the server");
                return Err(Error::Closed { state: self.state });
            }
        }
    }

    fn set_lowat(&mut self, bytes: i32) {
        if self.lowat == 0 || self.lowat == bytes {
            return;
        }
        self.lowat = match self.socket.tcp_fd() {
            Some(fd) if crate::sockopt::set_rcvlowat(fd, bytes).is_ok() => bytes,
            _ => 0,
        };
    }

    /// One read from the socket into the buffer. In bulk mode the kernel wakes us only once
    /// [`BULK_LOWAT`] bytes are queued: every wakeup costs the sending walsender an
    /// inter-processor interrupt, which on virtual machines made a backup's server side a
    /// fifth slower. Data that stays below the mark (the stream's last messages, a throttled
    /// server) is read after [`BULK_WAIT`], when the mark is lowered again.
    async fn read_some(&mut self) -> std::io::Result<usize> {
        self.set_lowat(if self.bulk { BULK_LOWAT } else { 1 });
        if self.lowat > 1 {
            if let Ok(r) =
                tokio::time::timeout(BULK_WAIT, self.socket.read_buf(&mut self.read_buf)).await
            {
                return r;
            }
            self.set_lowat(1);
        }
        self.socket.read_buf(&mut self.read_buf).await
    }

    /// Reads a message, folding ParameterStatus into the connection.
    pub(crate) async fn recv(&mut self) -> Result<BackendMessage> {
        loop {
            match self.read_message().await? {
                BackendMessage::ParameterStatus { name, value } => self.set_parameter(name, value),
                other => return Ok(other),
            }
        }
    }

    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Writes out the write buffer. Cancel-safe: what was not written yet stays buffered and
    /// goes out with the next flush, so no message is sent twice or cut in half.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        let state = self.state;
        while !self.write_buf.is_empty() {
            let n = self
                .socket
                .write(&self.write_buf)
                .await
                .map_err(|e| Error::io(format!("writing to server during {state}"), e))?;
            if n == 0 {
                self.broken = Some("closed by the server");
                return Err(Error::Closed { state });
            }
            self.write_buf.advance(n);
        }
        self.socket
            .flush()
            .await
            .map_err(|e| Error::io(format!("writing to server during {state}"), e))
    }

    pub(crate) fn notice(&self, n: &DbError) {
        (self.notice_handler)(n)
    }

    /// Sends a simple query and collects every result set. An ErrorResponse becomes
    /// [`Error::Db`] once the server is ready again, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        if sql.contains('\0') {
            return Err(Error::Usage("a command cannot contain a NUL byte".into()));
        }
        self.check_idle()?;
        frontend::query(sql, &mut self.write_buf)
            .map_err(|e| Error::Usage(format!("query: {e}")))?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error = None;
        loop {
            match self.recv().await? {
                BackendMessage::RowDescription(cols) => {
                    current = Some(QueryResult {
                        columns: cols,
                        ..Default::default()
                    })
                }
                BackendMessage::DataRow(vals) => {
                    let r = current.as_mut().ok_or_else(|| {
                        Error::protocol(self.state, "DataRow without RowDescription")
                    })?;
                    let row = vals
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect();
                    r.rows.push(row);
                }
                BackendMessage::CommandComplete(tag) => {
                    let mut r = current.take().unwrap_or_default();
                    r.tag = tag;
                    results.push(r);
                }
                BackendMessage::EmptyQueryResponse => {}
                BackendMessage::NoticeResponse(n) => self.notice(&n),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::CopyInResponse
                | BackendMessage::CopyOutResponse
                | BackendMessage::CopyBothResponse => {
                    self.broken = Some("unexpected COPY from a simple query");
                    return Err(Error::Usage(format!(
                        "\"{sql}\" starts a COPY; use the streaming method for it"
                    )));
                }
                other => {
                    return Err(Error::protocol(
                        self.state,
                        format!("unexpected message {other:?}"),
                    ))
                }
            }
        }
        match error {
            Some(e) => Err(self.db_error(e)),
            None => Ok(results),
        }
    }

    pub(crate) fn check_idle(&self) -> Result<()> {
        if let Some(why) = self.broken {
            return Err(Error::Usage(format!("the connection is unusable: {why}")));
        }
        Ok(())
    }

    /// Parameters the server reported (ParameterStatus), by name.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's version.
    pub fn server_version(&self) -> &ServerVersion {
        &self.version
    }

    /// The walsender's process id.
    pub fn backend_pid(&self) -> u32 {
        self.backend_pid
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// True when SCRAM-SHA-256-PLUS bound the authentication to this TLS channel.
    pub fn channel_binding_used(&self) -> bool {
        self.channel_binding_used
    }

    /// The negotiated ALPN protocol, if TLS is in use.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.socket {
            Socket::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Where NoticeResponse messages outside a stream go (by default, `tracing::warn!`). Streams
    /// hand notices to their caller as events instead.
    pub fn set_notice_handler(&mut self, handler: NoticeHandler) {
        self.notice_handler = handler;
    }

    /// Ends the session politely (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = ServerVersion::parse("15.18 (Debian 15.18-0+deb12u1)").unwrap();
        assert_eq!((v.major, v.minor), (15, 18));
        let v = ServerVersion::parse("18.4").unwrap();
        assert_eq!((v.major, v.minor), (18, 4));
        let v = ServerVersion::parse("19devel").unwrap();
        assert_eq!(v.major, 19);
        assert!(ServerVersion::parse("devel").is_none());
    }
}
