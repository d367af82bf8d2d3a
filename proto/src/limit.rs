//! The message size limit as every service of a server answers it: a request message above
//! [`crate::MAX_MESSAGE_BYTES`] gets RESOURCE_EXHAUSTED (what gRPC specifies for a message
//! larger than the receiver takes), whichever service it was for. Each service already refuses
//! to decode such a message, but says so differently: tonic's unary decoding gives OUT_OF_RANGE,
//! and tonic-reflection's stream ends with OK and no message. One layer on the server watches
//! the request's message frames and makes the answer the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

/// The layer for [`tonic::transport::Server::layer`].
#[derive(Clone, Copy, Debug)]
pub struct MessageLimit {
    pub limit: usize,
}

impl<S> tower_layer::Layer<S> for MessageLimit {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limit: self.limit,
        }
    }
}

/// A service behind [`MessageLimit`].
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limit: usize,
}

/// The size of the first message above the limit, once one was seen (0: none).
type Seen = Arc<AtomicU64>;

fn refusal(found: u64, limit: usize) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "the request's message is {found} bytes, above the {limit}-byte limit"
    ))
}

impl<S, ResBody> tower_service::Service<http::Request<Body>> for Limited<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    // Unpin, as tonic's own body is: the answer is wrapped without another allocation.
    ResBody: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let seen = Seen::default();
        let limit = self.limit;
        let request = request.map(|body| {
            Body::new(Watched {
                inner: body,
                frames: Frames::new(limit as u64),
                seen: seen.clone(),
            })
        });
        // The clone that was made ready is the one called (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            let found = seen.load(Ordering::Relaxed);
            if found > 0 {
                return Ok(refusal(found, limit).into_http());
            }
            Ok(response.map(|body| {
                Body::new(Rewritten {
                    inner: body,
                    seen,
                    limit,
                })
            }))
        })
    }
}

/// Where the request's byte stream is in its gRPC frames (a flag byte, a 4-byte length, then
/// the message).
#[derive(Debug)]
struct Frames {
    limit: u64,
    header: [u8; 5],
    have: usize,
    skip: u64,
}

impl Frames {
    fn new(limit: u64) -> Frames {
        Frames {
            limit,
            header: [0; 5],
            have: 0,
            skip: 0,
        }
    }

    /// Reads `bytes`; the length of a message above the limit, if one begins in them.
    fn read(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let step = bytes
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= step as u64;
                bytes = &bytes[step..];
                continue;
            }
            let step = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + step].copy_from_slice(&bytes[..step]);
            self.have += step;
            bytes = &bytes[step..];
            if self.have == 5 {
                self.have = 0;
                let length = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                if length > self.limit {
                    return Some(length);
                }
                self.skip = length;
            }
        }
        None
    }
}

/// The request's body, passed on as it is while its frames are watched.
struct Watched {
    inner: Body,
    frames: Frames,
    seen: Seen,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && self.seen.load(Ordering::Relaxed) == 0
            && let Some(found) = self.frames.read(data)
        {
            self.seen.store(found, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The response's body, whose closing status says RESOURCE_EXHAUSTED once a message above
/// the limit was seen in the request (a stream answered before it came).
struct Rewritten<B> {
    inner: B,
    seen: Seen,
    limit: usize,
}

impl<B> HttpBody for Rewritten<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let (seen, limit) = (self.seen.load(Ordering::Relaxed), self.limit);
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if seen > 0 && frame.is_trailers() => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                // The refusal's message is plain ASCII: its headers are always written.
                let _ = refusal(seen, limit).add_header(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, length.min(64) as usize));
        bytes
    }

    #[test]
    fn a_message_above_the_limit_is_seen_however_the_bytes_are_split() {
        // Two small messages, then a header announcing 1 MiB, split at every byte.
        let mut stream = frame(10);
        stream.extend(frame(0));
        stream.extend(&frame(1 << 20)[..5]);
        let mut frames = Frames::new(16 * 1024);
        let found: Vec<u64> = stream
            .chunks(1)
            .filter_map(|byte| frames.read(byte))
            .collect();
        assert_eq!(found, [1 << 20]);
        // At the limit is taken.
        let mut frames = Frames::new(64);
        assert_eq!(frames.read(&frame(64)), None);
        assert_eq!(frames.read(&frame(65)[..5]), Some(65));
    }
}
