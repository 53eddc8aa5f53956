//! Trace context of a task, so that every step of a task lands in one trace whichever process
//! runs it.
//!
//! A task's trace id and its root span id are derived from the task (its id and creation time)
//! by [`task_trace`]: no column carries them and no process needs to ask another. The tracer
//! provider must use [`TaskIdGenerator`] (the `tasker` binary's does) for the root span to get
//! its derived ids (OpenTelemetry's span builder cannot set them). The process
//! that creates a task emits the root span `tasker.task` (at creation; it links to the span
//! that created it, such as an HTTP request); a worker's `tasker.step` span names that root
//! span as its parent. With the `otel` feature off (the language bindings) these calls cost
//! nothing; with it on and no OpenTelemetry tracer provider installed, next to nothing.

/// The trace id and the root span id of the task `task_id` created at `created_ms`: two
/// different mixes of both, never zero.
pub fn task_trace(task_id: i64, created_ms: i64) -> (u128, u64) {
    let hi = mix(task_id as u64 ^ 0x7461_736b_6572_0001);
    let lo = mix(created_ms as u64 ^ hi);
    let span = mix(hi ^ lo.rotate_left(17)) | 1;
    (((hi as u128) << 64) | lo as u128 | 1, span)
}

/// splitmix64's finalizer: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(feature = "otel")]
mod otel {
    use std::cell::Cell;
    use std::time::{Duration, SystemTime};

    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

    use opentelemetry::trace::{
        Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer,
    };
    use opentelemetry::{Context, KeyValue};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    fn context(task_id: i64, created_ms: i64) -> SpanContext {
        let (trace, span) = super::task_trace(task_id, created_ms);
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    thread_local! {
        static NEXT_TRACE: Cell<Option<u128>> = const { Cell::new(None) };
        static NEXT_SPAN: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Random ids, except for a task's root span, which gets the ids [`super::task_trace`]
    /// derives. Install it in the tracer provider (`with_id_generator`).
    #[derive(Debug, Default)]
    pub struct TaskIdGenerator(RandomIdGenerator);

    impl IdGenerator for TaskIdGenerator {
        fn new_trace_id(&self) -> TraceId {
            match NEXT_TRACE.with(|c| c.take()) {
                Some(t) => TraceId::from(t),
                None => self.0.new_trace_id(),
            }
        }
        fn new_span_id(&self) -> SpanId {
            match NEXT_SPAN.with(|c| c.take()) {
                Some(s) => SpanId::from(s),
                None => self.0.new_span_id(),
            }
        }
    }

    /// Emits the root span `tasker.task` of a task just created (a child task's names its
    /// parent task: `tasker.parent_task_id`).
    pub fn task_created(task_id: i64, created_ms: i64, template: &str, parent: Option<i64>) {
        let tracer = opentelemetry::global::tracer("tasker");
        let (trace, span) = super::task_trace(task_id, created_ms);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(created_ms.max(0) as u64);
        let creator = tracing::Span::current().context();
        let creator = creator.span().span_context().clone();
        let mut attributes = vec![
            KeyValue::new("tasker.task_id", task_id),
            KeyValue::new("tasker.template", template.to_owned()),
        ];
        if let Some(p) = parent {
            attributes.push(KeyValue::new("tasker.parent_task_id", p));
        }
        let mut b = tracer
            .span_builder("tasker.task")
            .with_kind(SpanKind::Internal)
            .with_start_time(at)
            .with_attributes(attributes);
        if creator.is_valid() {
            b = b.with_links(vec![Link::with_context(creator)]);
        }
        NEXT_TRACE.with(|c| c.set(Some(trace)));
        NEXT_SPAN.with(|c| c.set(Some(span)));
        let mut s = b.start_with_context(&tracer, &Context::new());
        NEXT_TRACE.with(|c| c.set(None));
        NEXT_SPAN.with(|c| c.set(None));
        opentelemetry::trace::Span::end_with_timestamp(&mut s, at);
    }

    /// Adds a link from `span` to `to` (a batch to the requests it serves).
    pub fn link(span: &tracing::Span, to: &tracing::Span) {
        let cx = to.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.add_link(sc);
        }
    }

    /// Makes `span` (a step's) a child of its task's root span.
    pub fn step_of_task(span: &tracing::Span, task_id: i64, created_ms: i64) {
        let _ =
            span.set_parent(Context::new().with_remote_span_context(context(task_id, created_ms)));
    }
}

#[cfg(feature = "otel")]
pub use otel::{link, step_of_task, task_created, TaskIdGenerator};

/// Emits the root span of a task just created (no-op without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub fn task_created(_task_id: i64, _created_ms: i64, _template: &str, _parent: Option<i64>) {}

/// Adds a link from `span` to `to` (no-op without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub fn link(_span: &tracing::Span, _to: &tracing::Span) {}

/// Makes a step's span a child of its task's root span (no-op without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub fn step_of_task(_span: &tracing::Span, _task_id: i64, _created_ms: i64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_has_one_stable_trace_and_different_tasks_differ() {
        assert_eq!(task_trace(7, 1_000), task_trace(7, 1_000));
        let mut seen = std::collections::HashSet::new();
        for id in 1..200 {
            for at in [0, 1, 1_764_000_000_000] {
                let (t, s) = task_trace(id, at);
                assert!(t != 0 && s != 0);
                assert!(seen.insert(t), "trace ids collide for task {id} at {at}");
            }
        }
    }
}
