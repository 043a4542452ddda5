//! A connection's socket with a write timeout and an idle timeout.
//!
//! - A write (or flush, or shutdown) that cannot make progress for
//!   `write_timeout` fails: a peer that never reads cannot hold the
//!   connection by letting our answers pile up.
//! - A connection on which no byte is read or written for `idle` fails the
//!   next read: kept-alive connections between requests, and peers that sent
//!   requests and stopped, are closed.
//!
//! The lifetime cap and the request cap are in `http::serve_*_connection`.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(crate) struct TimedIo<T> {
    inner: T,
    write_timeout: Duration,
    idle: Duration,
    write_deadline: Option<Pin<Box<Sleep>>>,
    idle_deadline: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, write_timeout: Duration, idle: Duration) -> Self {
        Self { inner, write_timeout, idle, write_deadline: None, idle_deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn progressed(&mut self) {
        let idle = self.idle;
        self.idle_deadline.as_mut().reset(Instant::now() + idle);
    }

    /// After a write-side poll: progress clears the deadline; pending arms it
    /// (once) and fails when it has passed.
    fn write_poll<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.write_deadline = None;
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let t = self.write_timeout;
                let d = self.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                match d.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer read nothing for {} s", t.as_secs_f64()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.idle_deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the connection was idle for {} s", this.idle.as_secs_f64()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.write_poll(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_poll(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_poll(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.write_poll(cx, r)
    }
}
