//! The byte stream under a connection: TCP, Unix-domain socket, an SSH tunnel's channel, or TLS
//! over TCP or over the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// One of the transports a connection runs over.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Ssh(Box<crate::ssh::SshStream>),
    Tls(Box<TlsStream<Socket>>),
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Socket::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            Socket::Ssh(_) => f.write_str("Ssh"),
            Socket::Tls(s) => f.debug_tuple("Tls").field(&s.get_ref().0).finish(),
        }
    }
}

impl Socket {
    /// The TCP socket underneath, if any.
    pub(crate) fn tcp_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Socket::Tcp(s) => Some(s.as_fd()),
            Socket::Tls(s) => s.get_ref().0.tcp_fd(),
            Socket::Unix(_) | Socket::Ssh(_) => None,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Ssh(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Ssh(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Ssh(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Ssh(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
