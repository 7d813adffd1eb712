//! The watch stream shared by the backends: replay retained history, then go live.
//!
//! A backend subscribes to its live event channel *first*, then hands the receiver and a
//! history loader to [`event_stream`]. The stream asks the loader for history in chunks
//! (`next` = the first revision it still needs) until the loader reports it reached the
//! durable head, then reads the live channel, skipping events it already replayed.
//!
//! Every revision produces exactly one event, so the stream tracks the last revision it
//! has *seen* (whether or not the key matched the prefix): a live event at or below it is
//! a duplicate and is skipped; one beyond `last + 1` means the channel dropped events this
//! watcher still needed, and the stream ends with [`Error::Lagged`]. A lag that only
//! dropped already-replayed events is harmless and ignored. This makes the switch from
//! replay to live gap- and duplicate-free by construction, and checks it at runtime.

use std::{collections::VecDeque, future::Future, sync::Arc};

use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Error, Event, Result, Revision, WatchStream};

/// One chunk of replayed history.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Matching events, in revision order.
    pub events: Vec<Event>,
    /// The highest revision examined (matching or not); the next chunk starts after it.
    pub scanned_to: Revision,
    /// Whether `scanned_to` reached the durable head when the chunk was read; after it
    /// the stream switches to live events.
    pub done: bool,
}

/// Builds a watch stream for keys starting with `prefix` and revisions above `after`.
/// `live` must have been subscribed before the first call of `load`.
pub(crate) fn event_stream<L, F>(
    prefix: String,
    after: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    load: L,
) -> WatchStream
where
    L: FnMut(Revision) -> F + Send + 'static,
    F: Future<Output = Result<Replay>> + Send + 'static,
{
    let state = State {
        prefix,
        last: after,
        live,
        load,
        pending: VecDeque::new(),
        replaying: true,
        finished: false,
    };
    futures::stream::unfold(state, State::next_item).boxed()
}

struct State<L> {
    prefix: String,
    /// The highest revision already seen (yielded or filtered out).
    last: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    load: L,
    pending: VecDeque<Event>,
    replaying: bool,
    finished: bool,
}

impl<L, F> State<L>
where
    L: FnMut(Revision) -> F + Send + 'static,
    F: Future<Output = Result<Replay>> + Send + 'static,
{
    async fn next_item(mut self) -> Option<(Result<Event>, Self)> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.replaying {
                match (self.load)(self.last.saturating_add(1)).await {
                    Ok(chunk) => {
                        self.last = self.last.max(chunk.scanned_to);
                        self.pending.extend(chunk.events);
                        self.replaying = !chunk.done;
                        continue;
                    }
                    Err(e) => return self.fail(e),
                }
            }
            match self.live.recv().await {
                Ok(event) => {
                    let revision = event.revision();
                    if revision <= self.last {
                        continue;
                    }
                    if revision != self.last.saturating_add(1) {
                        tracing::debug!(
                            prefix = %self.prefix,
                            last = self.last,
                            revision,
                            "watcher missed live events; ending the stream"
                        );
                        return self.fail(Error::Lagged);
                    }
                    self.last = revision;
                    if event.kv.key.starts_with(&self.prefix) {
                        return Some((Ok(Event::clone(&event)), self));
                    }
                }
                // Whether the dropped events matter is decided by the revision check above.
                Err(RecvError::Lagged(skipped)) => {
                    tracing::trace!(prefix = %self.prefix, skipped, "watch channel lagged");
                }
                Err(RecvError::Closed) => return self.fail(Error::Closed),
            }
        }
    }

    fn fail(mut self, error: Error) -> Option<(Result<Event>, Self)> {
        self.finished = true;
        Some((Err(error), self))
    }
}
