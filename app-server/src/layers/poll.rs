//! The long-poll layer: a request of a [`long poll`] route whose `wait`
//! says to wait is parked off the workers ([`crate::topics`]) until its
//! topic is woken, on any node, or its wait ends; it then runs with what it
//! finds. It sits outside the run-once layer: a parked request has written
//! nothing, so it runs once like any other when it runs. A draining node
//! parks nothing.
//!
//! [`long poll`]: dsf_common::pipeline::Route::long_poll

use dsf_common::pipeline::{Layer, Next, Outcome};

use crate::node::{Call, Node};

/// The long-poll layer.
pub struct LongPolls;

impl Layer<Node> for LongPolls {
    fn call(&self, call: &mut Call, next: Next<'_, Node>) -> Outcome {
        if !call.server().is_draining() {
            if let Some(wait) = call.wait() {
                return Outcome::Park(wait);
            }
        }
        next.run(call)
    }
}
