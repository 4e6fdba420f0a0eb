//! `node.leave` (the node's key, or the cluster secret): `{"id"}` → `{}`. The node is out of the
//! next view at once; leaving twice, or after eviction, is not an error.

use dsf_common::view::Leave;
use dsf_common::wire::Admitted;
use dsf_common::Error;

use crate::cluster::Cluster;

/// The handler.
pub fn handle(cluster: &Cluster, req: &Admitted) -> Result<String, Error> {
    let leave: Leave = req.request.body()?;
    cluster.leave(&leave.id)?;
    Ok("{}".into())
}
