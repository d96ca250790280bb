//! The crate's error type and the server's ErrorResponse / NoticeResponse fields.
//!
//! Field codes from `protocol-error-fields` in the PostgreSQL documentation
//! (`src/include/postgres_ext.h` `PG_DIAG_*`).

use std::fmt;
use std::io;

/// An ErrorResponse or NoticeResponse from the server, parsed into its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbError {
    /// Severity, never localised (`V`), falling back to the localised one (`S`).
    pub severity: String,
    /// SQLSTATE code (`C`), e.g. `42704`.
    pub code: String,
    /// Primary message (`M`).
    pub message: String,
    /// Optional detail (`D`).
    pub detail: Option<String>,
    /// Optional hint (`H`).
    pub hint: Option<String>,
    /// Optional context (`W`).
    pub context: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:  {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL:  {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT:  {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// Why an authentication exchange failed on our side.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The server asked for a password and none was configured (conninfo, PGPASSWORD, pgpass).
    #[error("the server requested {method} authentication, but no password was supplied")]
    PasswordRequired {
        /// The method the server asked for.
        method: &'static str,
    },
    /// The server asked for a method this client does not implement.
    #[error("the server requested an unsupported authentication method: {0}")]
    UnsupportedMethod(String),
    /// channel_binding=require, but the server did not authenticate with SCRAM-SHA-256-PLUS.
    #[error("channel binding required, but {0}")]
    ChannelBindingRequired(&'static str),
    /// The SCRAM exchange failed (bad server signature, malformed message).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
}

/// Every error this crate returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection parameters are invalid or incomplete.
    #[error("invalid connection parameters: {0}")]
    Config(String),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication failed on the client side.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The server reported an error (an ErrorResponse).
    #[error("server error during {state}: {error}")]
    Db {
        /// The protocol state we were in (the command, or `startup`).
        state: &'static str,
        /// The server's fields.
        error: Box<DbError>,
    },
    /// The server sent something that breaks the protocol.
    #[error("protocol violation during {state}: {detail}")]
    Protocol {
        /// The protocol state we were in.
        state: &'static str,
        /// What was wrong, with the offending value.
        detail: String,
    },
    /// The server closed the connection.
    #[error("the server closed the connection unexpectedly during {state}")]
    Closed {
        /// The protocol state we were in.
        state: &'static str,
    },
    /// The SSH tunnel could not be opened.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    /// A connection or read timed out.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The caller misused the API (e.g. a stream used after it ended).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The server's error fields, if the server reported this error.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Db { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        self.as_db_error().map(|e| e.code.as_str())
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(state: &'static str, detail: impl Into<String>) -> Self {
        Error::Protocol {
            state,
            detail: detail.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
