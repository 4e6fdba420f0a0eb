//! `node.leave` (the node's key, or the cluster secret): `{"id"}` → `{}`. The node is out of the
//! next view at once; leaving twice, or after eviction, is not an error.

use dsf_common::pipeline::Call;
use dsf_common::view::Leave;
use dsf_common::Result;
use dsf_proto::Empty;

use super::State;

/// The handler.
pub fn handle(call: &Call<State>, leave: Leave) -> Result<Empty> {
    call.server().leave(&leave.id)?;
    Ok(Empty {})
}
