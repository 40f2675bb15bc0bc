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

/// The try's span (and its `traceparent` rewritten to name the span; a borrowed head is
/// copied for that). Called for a sampled request (`HeadScan::sampled`) while an export is
/// installed (see `nexus_middleware::otel::exporting`).
pub(super) fn client_span<B>(req: &mut Outgoing<'_, B>) -> Option<Box<Started>> {
    let headers = match &*req {
        Outgoing::Owned(r, _) => r.headers(),
        Outgoing::Lean(parts) => &parts.headers,
    };
    let server = headers.get(TRACEPARENT).and_then(|v| TraceParent::parse(v.as_bytes()))?;
    let export = nexus_middleware::otel::installed()?;
    let span = ClientSpan::start(&server);
    let value = span.traceparent().to_header_value();
    let method = match req {
        Outgoing::Owned(r, _) => {
            r.headers_mut().insert(TRACEPARENT, value);
            r.method().clone()
        }
        // The head is shared by every try: this try's own copy (a sampled request only).
        Outgoing::Lean(parts) => {
            let mut r = rebuild(parts, SendBody::Buffered { data: None, trailers: None });
            r.headers_mut().insert(TRACEPARENT, value);
            let scan = HeadScan::of(r.headers());
            let method = parts.method.clone();
            *req = Outgoing::Owned(r, scan);
            method
        }
    };
    Some(Box::new(Started { span, method, export }))
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
