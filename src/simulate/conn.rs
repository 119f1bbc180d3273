//! The simulator's connections: accepted with `TCP_NODELAY`, and able to
//! end a call without any answer.
//!
//! A provider fault may drop a call (a reset before or after the call is
//! applied, or an outage in `reset` mode). axum always has a response to
//! write, so this is the one small escape hatch below it: the handler
//! marks its connection through the [`Conn`] it got as `ConnectInfo`
//! ([`Conn::hang_up`]); from then on the connection refuses every write,
//! so hyper gives up on the answer without sending a byte and closes the
//! connection; for a reset the socket closes with `SO_LINGER` 0, so the
//! client sees a TCP reset.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How a call ends without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HangUp {
    /// A TCP reset: the injected fault.
    Reset,
    /// A plain close: the simulator is stopping, or the client went away.
    Close,
}

const OPEN: u8 = 0;
const CLOSE: u8 = 1;
const RESET: u8 = 2;

/// The connection a request came on, as the handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    state: Arc<AtomicU8>,
}

impl Conn {
    fn new() -> Self {
        Self {
            state: Arc::new(AtomicU8::new(OPEN)),
        }
    }

    /// Ends the call without an answer; the response returned is never
    /// written.
    pub(crate) fn hang_up(&self, how: HangUp) -> Response {
        let state = match how {
            HangUp::Reset => RESET,
            HangUp::Close => CLOSE,
        };
        self.state.store(state, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }
}

/// The listener `axum::serve` takes: a TCP listener whose connections can
/// be hung up on.
pub(crate) struct SimListener {
    tcp: TcpListener,
}

impl SimListener {
    /// Wraps a bound listener.
    pub(crate) fn new(tcp: TcpListener) -> Self {
        Self { tcp }
    }
}

impl Listener for SimListener {
    type Io = SimStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimStream, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Conn::new();
                    return (SimStream { stream, conn }, addr);
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl Connected<IncomingStream<'_, SimListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.io().conn.clone()
    }
}

/// A TCP stream that refuses writes once hung up on, and resets (instead
/// of closing) when the hang-up is a reset.
pub(crate) struct SimStream {
    stream: TcpStream,
    conn: Conn,
}

impl SimStream {
    /// Refuses the write when the call was hung up on.
    fn check_open(&self) -> io::Result<()> {
        match self.conn.state() {
            OPEN => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the simulator",
            )),
        }
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if self.conn.state() == RESET {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open()?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_open()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.state() != OPEN {
            // No FIN first: dropping the stream closes (or resets) it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
