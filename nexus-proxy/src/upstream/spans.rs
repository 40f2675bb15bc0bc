//! An upstream try's client span (feature `otel`): for a sampled request while a span export
//! is installed, the try carries a `traceparent` naming its own span, and the span (endpoint,
//! attempt, status or error) goes to the export when the try is answered or fails.

use super::Outgoing;
use super::retry::rebuild;
use crate::body::UpstreamBody;
use crate::error::ProxyError;
use crate::headers::HeadScan;
use crate::replay::SendBody;
use http::{Method, Response};
use nexus_middleware::otel::{ClientSpan, SpanExport};
use nexus_middleware::trace_context::{TRACEPARENT, TraceParent};
use std::sync::Arc;

/// A started client span and where it goes.
pub(super) struct Started {
    span: ClientSpan,
    method: Method,
    export: Arc<SpanExport>,
}

/// The try as it goes, and its span when it is sampled (a `traceparent` parse: called only
/// while an export is installed, see `nexus_middleware::otel::exporting`).
pub(super) fn client_span<B>(req: Outgoing<'_, B>) -> (Outgoing<'_, B>, Option<Box<Started>>) {
    let headers = match &req {
        Outgoing::Owned(r, _) => r.headers(),
        Outgoing::Lean(parts) => &parts.headers,
    };
    // Most requests are not sampled: one byte says so before any parsing.
    if !nexus_middleware::trace_context::is_sampled(headers) {
        return (req, None);
    }
    let server = headers.get(TRACEPARENT).and_then(|v| TraceParent::parse(v.as_bytes()));
    let (Some(server), Some(export)) = (server.filter(TraceParent::sampled), nexus_middleware::otel::installed())
    else {
        return (req, None);
    };
    let span = ClientSpan::start(&server);
    let value = span.traceparent().to_header_value();
    let (req, method) = match req {
        Outgoing::Owned(mut r, scan) => {
            r.headers_mut().insert(TRACEPARENT, value);
            let method = r.method().clone();
            (Outgoing::Owned(r, scan), method)
        }
        // The head is shared by every try: this try's own copy (a sampled request only).
        Outgoing::Lean(parts) => {
            let mut r = rebuild(parts, SendBody::Buffered { data: None, trailers: None });
            r.headers_mut().insert(TRACEPARENT, value);
            let scan = HeadScan::of(r.headers());
            (Outgoing::Owned(r, scan), parts.method.clone())
        }
    };
    (req, Some(Box::new(Started { span, method, export })))
}

impl Started {
    /// The try is over: its span to the export. `retries`: tries before this one.
    pub(super) fn finish<B>(
        self,
        authority: &str,
        retries: u32,
        result: &Result<Response<UpstreamBody<B>>, ProxyError>,
    ) {
        let outcome = match result {
            Ok(res) => Ok(res.status().as_u16()),
            Err(e) => Err(e.kind().as_str()),
        };
        self.export.record(self.span.finish(self.method.as_str(), authority, retries + 1, outcome));
    }
}
